"""The cluster simulator at scale: 10,000 workers, 100,000 map tasks, 1% straggling
attempts (5x slower), 1% of machines crashing during the job, the default backup rule.

Prints policy events per second (events the executor fed the policy: completions,
heartbeats, losses, joins, cancellations; a round of heartbeats reaches the policy as one
``Heartbeats`` message but counts one event per machine in it, as a real worker sends one
each, and the policy records each machine's heartbeat) per second of wall time and per
second of this process's CPU time (the CPU figure is the one to compare on a shared
machine: other processes stretch the wall time, not the CPU time; the measured interval is
the simulation's loop, not building the job or its report), the wall time of the
simulation and its
peak memory (ru_maxrss), min and median of ``--repeat`` runs; the baseline beside it is
the same job with backups off, run alternately in the same process. Every line carries
the load average.

    python benchmarks/bench_simulate.py            # the issue's size
    python benchmarks/bench_simulate.py --smoke    # tiny, for CI
    python benchmarks/bench_simulate.py --profile  # cProfile of one run, top 25
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys

from mergeagg.runtime.simulate import simulate


def job(workers, maps, speculation, seed):
    return simulate(workers=workers, maps=maps, duration=("lognormal", 10.0, 0.2),
                    slow_attempts=0.01, slow_factor=5.0, failure_p=0.01,
                    heartbeat_interval=3.0, heartbeat_timeout=10.0,
                    speculation=speculation, seed=seed, timeline=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=10_000)
    ap.add_argument("--maps", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="100 workers, 1,000 maps, once")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.workers, args.maps, args.repeat = 100, 1_000, 1
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(job, args.workers, args.maps, "default", 0)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    print(f"load {open('/proc/loadavg').read().split()[0:3]}  "
          f"{args.workers} workers x {args.maps} maps")
    rows = {"default": [], "none": []}
    for rep in range(args.repeat):
        for spec in ("default", "none"):  # alternate contender and baseline
            sim = job(args.workers, args.maps, spec, rep)
            rows[spec].append(sim)
            print(f"  {spec:8s} run {rep}: wall {sim.wall_seconds:6.2f} s  "
                  f"cpu {sim.cpu_seconds:6.2f} s  "
                  f"{sim.events / sim.wall_seconds:10,.0f} events/s "
                  f"({sim.events / sim.cpu_seconds:,.0f}/s of CPU)  events {sim.events:,}  "
                  f"virtual {sim.seconds:7.1f} s  backups {sim.backups_launched}  "
                  f"lost {sim.workers_lost}  load {os.getloadavg()[0]:.2f}")
    for spec, sims in rows.items():
        walls = [s.wall_seconds for s in sims]
        rates = [s.events / s.wall_seconds for s in sims]
        cpu_rates = [s.events / s.cpu_seconds for s in sims]
        print(f"{spec:8s} wall min {min(walls):.2f} s median {statistics.median(walls):.2f} s"
              f"  events/s max {max(rates):,.0f} median {statistics.median(rates):,.0f}"
              f" (per CPU second: median {statistics.median(cpu_rates):,.0f})  "
              f"job {statistics.median(s.seconds for s in sims):.1f} s virtual")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:.0f} MB  load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

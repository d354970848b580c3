#!/usr/bin/env python3
"""Plots a soak run's RSS and open FDs over time (docs/TESTING.md, "Soak").

  plot.py SAMPLES.csv OUT.png [TITLE]

Needs matplotlib (pip install matplotlib). The two windows the pass criterion compares (the
second sixth and the last third of the run) are shaded; the sample taken after the load
stopped (the CSV's last row) is left out.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    rows = list(csv.DictReader(open(sys.argv[1])))[:-1]
    t = [float(r["t_s"]) / 60 for r in rows]
    rss = [float(r["rss_kb"]) / 1024 for r in rows]
    fds = [int(float(r["fds"])) for r in rows]
    duration = round(t[-1] * 6) / 6 if t else 0
    fig, (a, b) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for ax in (a, b):
        ax.axvspan(duration / 6, duration / 3, color="tab:green", alpha=0.12, label="baseline window")
        ax.axvspan(2 * duration / 3, duration, color="tab:orange", alpha=0.12, label="final window")
        ax.grid(alpha=0.3)
    a.plot(t, rss, color="tab:blue", marker=".", linewidth=1)
    a.set_ylabel("RSS (MiB)")
    a.set_ylim(bottom=0)
    a.legend(loc="lower right")
    b.plot(t, fds, color="tab:red", marker=".", linewidth=1)
    b.set_ylabel("open FDs")
    b.set_ylim(bottom=0)
    b.set_xlabel("minutes")
    fig.suptitle(sys.argv[3] if len(sys.argv) == 4 else "tollgate soak: RSS and open FDs")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=90)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time and peak memory of one prompt-to-USD run on the built-in prior (median of N runs).

    python scripts/bench_e2e.py [--prompt "a blue torus"] [--runs 3] [--out samples/benchmarks/e2e.json]

Each run is a fresh `magic3d generate` subprocess into a fresh folder; peak RSS is the child's
``ru_maxrss`` (Linux: KiB), measured by waiting on it with ``os.wait4``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exporters.common import atomic_output

ROOT = Path(__file__).resolve().parents[1]


def one_run(prompt: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "magic3d", "generate", prompt, "--prior", "builtin", "--device", "cpu",
               "--quiet", "--out", tmp, *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"run failed: {err.strip().splitlines()[-1] if err.strip() else status}")
        record = json.loads(next(Path(tmp).glob("*/run.json")).read_text())
        return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "timings": {k: round(v, 1) for k, v in record.get("timings", {}).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a blue torus")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "e2e.json"))
    args = parser.parse_args()
    extra = [x for item in args.overrides for x in ("--set", item)]
    runs = [one_run(args.prompt, extra) for _ in range(args.runs)]
    result = {
        "command": f"magic3d generate {args.prompt!r} --prior builtin --device cpu " + " ".join(extra),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg()), "gpu": "none lent in this session"},
        "runs": runs,
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "targets": {"seconds": 300, "peak_rss_mb": 4096},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_seconds", "median_peak_rss_mb")}))


if __name__ == "__main__":
    main()

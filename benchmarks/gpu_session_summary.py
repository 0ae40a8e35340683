"""The end of benchmarks/gpu_session.sh: SUMMARY.txt and figures.json in $OUT from the steps'
statuses and figures, and the compact table on stdout (printed last by the script, so that it
is in the 12,000 characters of output that come back).

    python benchmarks/gpu_session_summary.py STEPS.tsv LOGS_DIR OUT_DIR [--dry-run]

STEPS.tsv: name, verdict, seconds taken, time limit (tab-separated). A step's figures are
LOGS_DIR/<name>/figures.json: a JSON object of name -> number, text, or {"value", "unit"}; a
nested object or list (a benchmark's own JSON) is flattened to dotted names.
"""
import json
import sys
import time
from pathlib import Path


def flatten(value, prefix=""):
    if isinstance(value, dict) and not ("value" in value and set(value) <= {"value", "unit"}):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            label = item.get("name", item.get("layer", i)) if isinstance(item, dict) else i
            yield from flatten(item, f"{prefix}[{label}]")
    elif isinstance(value, dict):
        yield prefix, value["value"], value.get("unit", "")
    else:
        yield prefix, value, ""


def main(argv):
    steps_file, logs, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    dry = "--dry-run" in argv
    steps = []
    for line in steps_file.read_text(encoding="utf-8").splitlines():
        name, verdict, took, limit = line.split("\t")
        steps.append({"step": name, "verdict": verdict, "seconds": int(took),
                      "limit": int(limit)})
    figures = {}
    for step in steps:
        path = logs / step["step"] / "figures.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            figures[f"{step['step']}.figures.json"] = {"value": f"unreadable: {e}", "unit": ""}
            continue
        for name, value, unit in flatten(data):
            figures[f"{step['step']}.{name}"] = {"value": value, "unit": unit}
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": dry,
              "steps": steps, "figures": figures}
    (out / "figures.json").write_text(json.dumps(record, indent=1), encoding="utf-8")

    lines = [f"GPU session {'(DRY RUN, sim/numpy) ' if dry else ''}{record['date']}", ""]
    width = max(len(s["step"]) for s in steps) if steps else 4
    for s in steps:
        lines.append(f"{s['step']:<{width}}  {s['seconds']:>4} s / {s['limit']:>3} s  "
                     f"{s['verdict']}")
    lines += ["", f"{sum(s['seconds'] for s in steps)} s in all; "
              f"{sum(s['verdict'] == 'ok' for s in steps)} of {len(steps)} steps ok", ""]
    table = [f"{name:<48} {value}{(' ' + unit) if unit else ''}"
             for name, entry in figures.items()
             for value, unit in [(entry["value"], entry["unit"])]]
    summary = lines + ["figures:"] + (table or ["(none)"])
    (out / "SUMMARY.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    # The compact table: steps, then figures, cut to what fits the output that comes back.
    compact = "\n".join(summary)
    print(compact[-9000:])


if __name__ == "__main__":
    main(sys.argv[1:])

"""The reference way to split a rollout dump, as the PeBR-R1 scripts do it: plain Python.

Parse every line of rollout_results.jsonl into a dict, count correct answers per qid, and
json-dump the three splits of the original dataset (a JSON array of reference records).
Kept deliberately naive (and with the reference's hard-coded 8 rollouts): it is the baseline
`bench_select.py` measures against, and tests compare its counts with `curate select`.

Usage: python reference_split.py ROLLOUTS.jsonl DATA.json OUT_DIR   (prints the counts as JSON)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

N_ROLLOUTS = 8


def main(rollouts: str, data: str, out: str) -> dict:
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    with open(rollouts, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            qid = str(rec["qid"])
            total[qid] += 1
            correct[qid] += int(rec["score"]["accuracy"] == 1.0)
    odd = sum(1 for n in total.values() if n != N_ROLLOUTS)
    if odd:
        print(f"warning: {odd} qid(s) do not have {N_ROLLOUTS} rollouts", file=sys.stderr)
    with open(data, encoding="utf-8") as f:
        records = json.load(f)
    splits: dict[str, list] = {"easy": [], "medium": [], "hard": []}
    for rec in records:
        qid = str(rec["qid"])
        if qid not in total:
            continue
        k = correct[qid]
        splits["easy" if k == N_ROLLOUTS else "hard" if k == 0 else "medium"].append(rec)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        with open(out_dir / f"{name}.json", "w", encoding="utf-8") as f:
            json.dump(recs, f, ensure_ascii=False)
    return {name: len(recs) for name, recs in splits.items()}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(*sys.argv[1:])))

"""The worked examples of docs/analysis.md: small tables drawn from known laws, each showing one verdict rule.

    python scripts/verdict_examples.py [--out outputs/verdict_examples]

Each example writes its table (CSV) and runs `ksir-fit` on it in-process; the printed lines are what
docs/analysis.md quotes. Deterministic (fixed seeds)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cli import main as ksir_fit

E, A, ALPHA = 1.8, 400.0, 0.3
QUEST = {4: 0.65, 3: 0.43, 2: 0.16}  # QuEST's eff(k)
MAP = "params=n_params,tokens=train_tokens,loss=val_loss"


def quest(sizes=(2e7, 5e7, 1e8, 2e8, 5e8, 1e9), reference=True, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        if reference:
            rows.append({"params": n, "tokens": 100 * n, "bits": 16, "method": "BF16:BF16",
                         "loss": (E + A * n ** -ALPHA) * np.exp(rng.normal(0, 0.003))})
        rows += [{"params": n, "tokens": 100 * n, "bits": k, "method": "QuEST:BF16",
                  "loss": (E + A * (n * e) ** -ALPHA) * np.exp(rng.normal(0, 0.003))} for k, e in QUEST.items()]
    return pd.DataFrame(rows)


def one_token_count(seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"params": n, "tokens": 1e9, "bits": k, "loss": (1.8 + 400 * (n * (1 - np.exp(-k / 2.7)))
                                                                          ** -0.3 + 0.2) * np.exp(rng.normal(0, 0.002))}
                         for n in (2e7, 5e7, 1e8, 2e8, 5e8, 1e9) for k in (2, 3, 4, 8, 16)])


def bent(seed=2) -> pd.DataFrame:
    """QuEST's law, except that the largest model is 8% worse than the law says (a regime change at scale):
    identified in-sample, but it does not extrapolate to the held-out largest size."""
    rng = np.random.default_rng(seed)
    sizes = (2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 3e9)
    return pd.DataFrame([{"params": n, "tokens": 100 * n, "bits": k,
                          "loss": (E + A * (n * {**QUEST, 16: 1.0}[k]) ** -ALPHA) * (1.08 if n == sizes[-1] else 1.0)
                          * np.exp(rng.normal(0, 0.002))} for n in sizes for k in (2, 3, 4, 16)])


EXAMPLES = {
    "ok": (lambda: quest(), ["--law", "efficiency"], "efficiency"),
    "no_reference": (lambda: quest(reference=False), ["--law", "efficiency"], "efficiency"),
    "unpinned_direction": (one_token_count, ["--law", "precision_data"], "precision_data"),
    "too_few_sizes": (lambda: quest(sizes=(2e7, 1e8, 5e8)), ["--law", "efficiency"], "efficiency"),
    "no_heldout_check": (lambda: quest(sizes=(2e7, 1e8, 5e8, 2e9)), ["--law", "efficiency"], "efficiency"),
    "poor": (bent, ["--law", "efficiency"], "efficiency"),
}


def run(name: str, out: Path) -> list[str]:
    make, args, law = EXAMPLES[name]
    table = out / f"{name}.csv"
    make().to_csv(table, index=False)
    fit_dir = out / name
    with contextlib.redirect_stdout(io.StringIO()):  # ksir-fit's own report: in fit_dir/report.md
        ksir_fit(["--table", str(table), "--map", MAP, "--out", str(fit_dir), "--no-figures", "--bootstrap", "200",
                  *args])
    fit = json.loads((fit_dir / "fit.json").read_text())
    cand = {c["law"]: c for c in fit["headline"]["candidates"]}.get(law)
    lines = [f"== {name}: ksir-fit --table {table.name} --map {MAP} {' '.join(args)}"]
    if cand is None:
        lines.append(f"  {law}: not a candidate")
    else:
        lines.append(f"  {law}: {cand['status']}; held-out check: {cand['heldout_check']}")
        lines += [f"    - {r}" for r in cand["reasons"]]
    lines.append(f"  answer from: {fit['headline']['trusted'] or 'the measured curves (no usable law)'}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/verdict_examples")
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for name in EXAMPLES:
        report += run(name, out)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

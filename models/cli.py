"""``sketchwatch train`` and ``sketchwatch evaluate`` (click commands; the group lives in service/cli.py).

TensorFlow is imported only when a command runs, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from models.formats import FormatError

PERCENTILES = {"90": 90.0, "95": 95.0, "99": 99.0, "99.5": 99.5}
_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _console() -> Console:
    """Console on stderr, so ``--json`` output on stdout stays machine-readable."""
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def _load(paths: tuple[Path, ...]):
    """Load files as bitmaps, turning format problems into a click error naming the file and line."""
    from models.datasets import load_files

    try:
        return load_files(paths)
    except FormatError as exc:
        raise click.ClickException(str(exc)) from None


def _labels(data) -> np.ndarray:
    """Per-row category: the word when present, else the source file name."""
    return np.array([w if w is not None else s for w, s in zip(data.words, data.sources)], dtype=object)


def _command_line() -> str:
    """The command as typed (``python -m models.cli`` is shown as such; ``sketchwatch`` likewise)."""
    prog = Path(sys.argv[0]).name
    if prog in ("__main__.py", "cli.py"):
        prog = "python -m models.cli"
    return " ".join([prog, shlex.join(sys.argv[1:])])


def _parse_holdout(text: str) -> float | list[str]:
    """'0.3' -> a fraction of categories; 'bear,dog' -> explicit category names."""
    try:
        return float(text)
    except ValueError:
        return [t.strip() for t in text.split(",") if t.strip()]


def _metrics_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    """Summary table: one row per evaluation set."""
    table = Table(title=title)
    for col in ("set", "normal", "anomalous", "AUROC", "AP", "TPR@1%FPR", "TPR@5%FPR", "precision@thr", "recall@thr"):
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=col != "set")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, m in rows.items():
        table.add_row(name, str(m["n_normal"]), str(m["n_anomalous"]), fmt(m["auroc"]), fmt(m["average_precision"]),
                      fmt(m["tpr_at_fpr_1"]), fmt(m["tpr_at_fpr_5"]), fmt(m["precision_at_threshold"]),
                      fmt(m["recall_at_threshold"]))
    return table


def _category_table(rows: list[dict[str, Any]], top: int) -> Table:
    """Per-category table, worst AUROC first."""
    shown = rows if top <= 0 else rows[:top]
    title = "per category (worst first)" + ("" if len(shown) == len(rows) else f", {len(shown)} of {len(rows)}")
    table = Table(title=title)
    for col in ("category", "n", "AUROC", "mean score", "flagged"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for r in shown:
        flagged = "-" if r["flagged_fraction"] is None else f"{r['flagged_fraction']:.1%}"
        table.add_row(r["category"], str(r["n"]), f"{r['auroc']:.3f}", f"{r['mean_score']:.3f}", flagged)
    return table


@click.command("train")
@click.option("--data", "data_files", multiple=True, required=True, type=_existing_file,
              help="Cat drawings (any format; repeat the option for several files).")
@click.option("--outliers", "outlier_files", multiple=True, type=_existing_file,
              help="Non-cat drawings with categories, for outlier exposure (repeatable).")
@click.option("--holdout-categories", default="0.3", show_default=True,
              help="Outlier categories kept out of training for evaluation: a fraction or a comma list.")
@click.option("--cat-holdout", default=0.15, show_default=True, type=click.FloatRange(0.01, 0.9),
              help="Fraction of cats held out (never trained on) for percentiles, threshold and metrics.")
@click.option("--holdout-first", default=0, show_default=True, type=click.IntRange(0),
              help="Always hold out the first N cat rows (e.g. rows that also exist as strokes).")
@click.option("--eval-anomalous", multiple=True, type=_existing_file,
              help="Evaluation-only non-cat files (never trained on; their categories are held out of the "
                   "outliers too); metrics go into model.json.")
@click.option("--eval-normal", multiple=True, type=_existing_file,
              help="Evaluation-only cat files (e.g. strokes of held-out cats): checks they score like held-out cats.")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1))
@click.option("--patience", default=5, show_default=True, type=click.IntRange(1), help="Early-stopping patience.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.5))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--latent-dim", default=16, show_default=True, type=click.IntRange(1))
@click.option("--input-size", default="28", show_default=True, type=click.Choice(["28", "32"]),
              help="Model input side: native 28, or 32 (zero-padded, as in the reference notebook).")
@click.option("--outlier-weight", default=2.0, show_default=True, type=click.FloatRange(0.0),
              help="Total loss weight of the outliers relative to the cats.")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--noise", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="Denoising: probability of zeroing each input pixel during training.")
@click.option("--learning-rate", default=2e-3, show_default=True, type=click.FloatRange(min=0.0, min_open=True))
@click.option("--threshold-percentile", default="95", show_default=True, type=click.Choice(["95", "99"]),
              help="Held-out cat percentile used as the suggested threshold.")
@click.option("--max-minutes", default=4.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Stop training (keeping the best epoch) after this long.")
@click.option("--threads", default=None, type=click.IntRange(1), help="TensorFlow thread pool size.")
@click.option("--out", "out_dir", default="model-out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Artifact directory to write.")
def train_command(data_files, outlier_files, holdout_categories, cat_holdout, holdout_first, eval_anomalous,
                  eval_normal, epochs, batch_size, patience, val_fraction, seed, latent_dim, input_size,
                  outlier_weight, augment, noise, learning_rate, threshold_percentile, max_minutes, threads, out_dir):
    """Train the cat autoencoder (with outlier exposure) and write a model artifact."""
    from models.autoencoder import AutoencoderConfig
    from models.datasets import fingerprint, split_categories, split_holdout

    console = _console()
    started = time.monotonic()
    cats = _load(data_files)
    if holdout_first > len(cats):
        raise click.BadParameter(f"only {len(cats)} cats", param_hint="--holdout-first")
    cat_train, cat_held = split_holdout(len(cats), cat_holdout, seed, holdout_first)
    outliers = _load(outlier_files) if outlier_files else None
    eval_sets = {path.name: _load((path,)) for path in eval_anomalous}
    # Categories of evaluation-only files stay out of training, so those files test unseen categories.
    eval_categories = {w for data in eval_sets.values() for w in data.words if w is not None}
    train_categories: list[str] = []
    held_categories: list[str] = []
    out_train = out_held = None
    if outliers is not None:
        labels = _labels(outliers)
        try:
            train_categories, held_categories = split_categories(
                labels, _parse_holdout(holdout_categories), seed, always_holdout=eval_categories)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--holdout-categories") from None
        held_mask = np.isin(labels, held_categories)
        out_train, out_held = outliers.subset(~held_mask), outliers.subset(held_mask)
        if len(out_train) == 0:
            raise click.BadParameter("no outlier categories left for training", param_hint="--holdout-categories")
    console.print(
        f"cats: {len(cat_train)} train, {len(cat_held)} held out; outliers: "
        + (f"{len(out_train)} train ({len(train_categories)} categories), {len(out_held)} held out "
           f"({len(held_categories)} categories)" if outliers is not None else "none")
    )

    from models.artifact import save_artifact
    from models.metrics import evaluate_scores
    from models.scoring import (
        DEFAULT_FORMULA,
        SCORE_DEFINITION,
        configure_tensorflow,
        score_batch,
    )
    from models.train import train_model

    configure_tensorflow(threads)
    config = AutoencoderConfig(input_size=int(input_size), latent_dim=latent_dim)
    train_cats = cats.bitmaps[cat_train]
    train_outliers = out_train.bitmaps if out_train is not None and outlier_weight > 0 else None
    model, history = train_model(
        train_cats, train_outliers, epochs=epochs, batch_size=batch_size, seed=seed, val_fraction=val_fraction,
        patience=patience, progress=True, config=config, outlier_weight=outlier_weight, augment=augment,
        noise=noise, learning_rate=learning_rate, max_seconds=max_minutes * 60.0, threads=threads,
    )
    console.print(f"training: {len(history.loss)} epochs, best {history.best_epoch + 1}, "
                  f"stopped by {history.stopped}, {history.seconds:.0f}s")

    held_scores, _ = score_batch(model, cats.bitmaps[cat_held])
    percentiles = {k: float(np.percentile(held_scores, p)) for k, p in PERCENTILES.items()}
    threshold = percentiles[threshold_percentile]
    metrics: dict[str, Any] = {}
    if out_held is not None and len(out_held):
        s, _ = score_batch(model, out_held.bitmaps)
        metrics["heldout_categories"] = evaluate_scores(held_scores, s, threshold, _labels(out_held))
    for name, extra in eval_sets.items():
        s, _ = score_batch(model, extra.bitmaps)
        metrics[name] = evaluate_scores(held_scores, s, threshold, _labels(extra))
    normal_checks = {}
    for path in eval_normal:
        extra = _load((path,))
        s, _ = score_batch(model, extra.bitmaps)
        # Same distribution as held-out cats means AUROC ~0.5 and ~(100 - percentile)% flagged.
        check = evaluate_scores(held_scores, s, threshold)
        normal_checks[path.name] = {"n": len(s), "mean_score": float(s.mean()),
                                    "mean_score_heldout_cats": float(held_scores.mean()),
                                    "auroc_vs_heldout_cats": check["auroc"],
                                    "flagged_fraction": check["recall_at_threshold"]}

    meta = {
        "architecture": config.to_dict(),
        "input": {
            "side": 28, "model_input_size": config.input_size, "padding": config.padding,
            "scaling": "uint8 / 255 -> float32 in [0, 1], ink high (white on black), zero-padded",
            "renderer": "models.raster.rasterize_batch (official numpy_bitmap rendering) for strokes",
        },
        "score": {"formula": DEFAULT_FORMULA, "definition": SCORE_DEFINITION, "higher_is_more_anomalous": True,
                  "flag_rule": "score > suggested_threshold"},
        "percentiles": percentiles,
        "suggested_threshold": threshold,
        "threshold_rule": (f"{threshold_percentile}th percentile of the held-out cats' scores: about "
                           f"{100 - float(threshold_percentile):g}% of cats get flagged"),
        "trained_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "training": {
            "command": _command_line(),
            "seed": seed, "epochs": epochs, "batch_size": batch_size, "patience": patience,
            "val_fraction": val_fraction, "outlier_weight": outlier_weight, "augment": augment, "noise": noise,
            "learning_rate": learning_rate, "history": history.to_dict(),
        },
        "data": {
            "cats": {"files": [p.name for p in data_files], "n_total": len(cats), "n_train": len(cat_train),
                     "sha256_train": fingerprint(train_cats), "n_heldout": len(cat_held),
                     "sha256_heldout": fingerprint(cats.bitmaps[cat_held]), "heldout_rows": cat_held.tolist(),
                     "holdout_fraction": cat_holdout, "holdout_first": holdout_first},
            "outliers": None if outliers is None else {
                "files": [p.name for p in outlier_files], "n_train": len(out_train),
                "sha256_train": fingerprint(out_train.bitmaps), "n_heldout": len(out_held),
                "train_categories": train_categories, "heldout_categories": held_categories,
                "forced_heldout_categories": sorted(eval_categories & set(held_categories)),
            },
            "eval_anomalous": [p.name for p in eval_anomalous],
            "eval_normal": [p.name for p in eval_normal],
        },
        "heldout_cat_score": {"n": int(held_scores.size), "mean": float(held_scores.mean()),
                              "min": float(held_scores.min()), "max": float(held_scores.max())},
        "metrics": metrics,
        "normal_checks": normal_checks,
    }
    meta = save_artifact(model, meta, out_dir)
    console.print(_metrics_table(f"model {meta['version']}: held-out cats vs", metrics) if metrics else "")
    console.print(f"wrote {out_dir} (threshold {threshold:.4f}) in {time.monotonic() - started:.0f}s")


def _heldout_subsets(meta: dict[str, Any], normal, anomalous):
    """Restrict to data the model never saw; returns (normal, anomalous, n anomalous rows dropped)."""
    from models.datasets import fingerprint

    info = meta.get("data", {}).get("cats") or {}
    rows = info.get("heldout_rows")
    if rows is None:
        raise click.ClickException("the model's model.json does not record its held-out cat rows")
    if len(normal) != info.get("n_total") or fingerprint(normal.bitmaps[rows]) != info.get("sha256_heldout"):
        raise click.BadParameter("these are not the files the model was trained on (fingerprint differs)",
                                 param_hint="--normal")
    train_categories = set((meta["data"].get("outliers") or {}).get("train_categories") or [])
    keep = ~np.isin(_labels(anomalous), list(train_categories))
    if not keep.any():
        raise click.BadParameter("every anomalous row belongs to a training category", param_hint="--anomalous")
    return normal.subset(np.asarray(rows)), anomalous.subset(keep), int((~keep).sum())


@click.command("evaluate")
@click.option("--normal", "normal_files", multiple=True, required=True, type=_existing_file,
              help="Cat drawings (any format; repeatable).")
@click.option("--anomalous", "anomalous_files", multiple=True, required=True, type=_existing_file,
              help="Non-cat drawings (any format; repeatable). Words give the per-category table.")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Artifact directory (default: the shipped model).")
@click.option("--heldout-only", is_flag=True,
              help="Keep only what the model never trained on: the held-out rows of its training cat files "
                   "(given as --normal, checked by fingerprint) and non-cats outside its training categories.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(0),
              help="Rows of the per-category table (0 = all).")
@click.option("--formula", default=None, type=click.Choice(["ink_normalized_sq_error", "ink_ratio_sq_error", "mse"]),
              help="Score formula to evaluate instead of the model's own (for comparisons).")
@click.option("--threads", default=None, type=click.IntRange(1), help="TensorFlow thread pool size.")
def evaluate_command(normal_files, anomalous_files, model_dir, heldout_only, as_json, top, formula, threads):
    """Score cats and non-cats with a model and report AUROC, AP, TPR at low FPR and per-category results."""
    from models.artifact import ArtifactError
    from models.metrics import evaluate_scores
    from models.scoring import Scorer

    normal = _load(normal_files)
    anomalous = _load(anomalous_files)
    try:
        scorer = Scorer.load(model_dir, threads=threads)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from None
    if formula is not None:
        scorer.formula = formula
    dropped = 0
    if heldout_only:
        normal, anomalous, dropped = _heldout_subsets(scorer.meta, normal, anomalous)
    normal_scores, _ = scorer.score_bitmaps(normal.bitmaps)
    anomalous_scores, _ = scorer.score_bitmaps(anomalous.bitmaps)
    has_labels = any(w is not None for w in anomalous.words)
    result = evaluate_scores(normal_scores, anomalous_scores, scorer.suggested_threshold,
                             _labels(anomalous) if has_labels else None)
    result["model_version"] = scorer.version
    result["score_formula"] = scorer.formula
    if heldout_only:
        result["dropped_training_category_rows"] = dropped
    if as_json:
        click.echo(json.dumps(result))
        return
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(f"model {scorer.version}, threshold {scorer.suggested_threshold:.4f} (flag when score > threshold)")
    console.print(_metrics_table("cats vs non-cats", {"all": result}))
    if result["per_category"]:
        console.print(_category_table(result["per_category"], top))


@click.group()
def main() -> None:
    """Model commands on their own (``python -m models.cli``); ``sketchwatch`` carries the same commands."""


main.add_command(train_command)
main.add_command(evaluate_command)

if __name__ == "__main__":
    main()

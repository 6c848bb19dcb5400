"""``sketchwatch train`` and ``sketchwatch evaluate`` (click commands; the ``sketchwatch`` group is service/cli/).

Thin wrappers: options in, tables out. The training pipeline is :func:`models.pipeline.run_training`.
TensorFlow is imported only when a command runs, so importing this module stays cheap.
"""

from __future__ import annotations

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
from models.pipeline import SpecError, TrainingSpec, category_labels, run_training

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
@click.option("--cat-jitter", default=0.0, show_default=True, type=click.FloatRange(0.0, 4.0),
              help="Smooth random displacement of the training images (std in pixels; a stroke-jitter stand-in).")
@click.option("--cat-drop", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of training images that lose a small disc of ink (a dropped-stroke stand-in).")
@click.option("--near-cat-weight", default=1.0, show_default=True, type=click.FloatRange(0.0),
              help="Loss weight of near-cat animal and face outlier categories relative to the other outliers.")
@click.option("--jigsaw-negatives", default=0.0, show_default=True, type=click.FloatRange(0.0, 2.0),
              help="Add this share of the training cats, quadrants shuffled, as outliers (synthetic non-cats).")
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
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
def train_command(data_files, outlier_files, holdout_categories, cat_holdout, holdout_first, eval_anomalous,
                  eval_normal, epochs, batch_size, patience, val_fraction, seed, latent_dim, input_size,
                  outlier_weight, augment, cat_jitter, cat_drop, near_cat_weight, jigsaw_negatives, noise, learning_rate,
                  threshold_percentile, max_minutes, threads, out_dir, verbose):
    """Train the cat autoencoder (with outlier exposure) and write a model artifact (model.keras and model.tflite)."""
    from models.quiet import quiet_tensorflow

    quiet_tensorflow(verbose)
    console = _console()
    started = time.monotonic()
    spec = TrainingSpec(
        data_files=data_files, outlier_files=outlier_files, holdout_categories=_parse_holdout(holdout_categories),
        cat_holdout=cat_holdout, holdout_first=holdout_first, eval_anomalous=eval_anomalous, eval_normal=eval_normal,
        epochs=epochs, batch_size=batch_size, patience=patience, val_fraction=val_fraction, seed=seed,
        latent_dim=latent_dim, input_size=int(input_size), outlier_weight=outlier_weight, augment=augment,
        cat_jitter=cat_jitter, cat_drop=cat_drop, near_cat_weight=near_cat_weight,
        jigsaw_negatives=jigsaw_negatives, noise=noise, learning_rate=learning_rate,
        threshold_percentile=threshold_percentile, max_minutes=max_minutes, threads=threads, command=_command_line(),
    )  # fmt: skip
    try:
        meta = run_training(spec, out_dir, report=console.print)
    except FormatError as exc:
        raise click.ClickException(str(exc)) from None
    except SpecError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None
    from models.export import ExportError, export_artifact

    try:
        # The parity check reads the held-out cats from the training files' folder.
        litert = export_artifact(out_dir, data_dir=data_files[0].parent, verbose=verbose)
    except ExportError as exc:
        raise click.ClickException(f"{exc}\nmodel.keras was written; workers will score it with Keras") from None
    console.print(f"model.tflite: max score diff vs Keras {litert['parity']['max_abs_score_diff']:.1e}")
    metrics = meta["metrics"]
    console.print(_metrics_table(f"model {meta['version']}: held-out cats vs", metrics) if metrics else "")
    console.print(f"wrote {out_dir} (threshold {meta['suggested_threshold']:.4f}) in {time.monotonic() - started:.0f}s")


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
    keep = ~np.isin(category_labels(anomalous), list(train_categories))
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
@click.option("--threads", default=None, type=click.IntRange(1), help="TensorFlow (or LiteRT) thread pool size.")
@click.option("--runtime", default="keras", show_default=True, type=click.Choice(["keras", "litert", "both"]),
              help="Score with Keras (TensorFlow) or LiteRT (model.tflite, as the workers do); 'both' runs each "
                   "and compares them.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
def evaluate_command(normal_files, anomalous_files, model_dir, heldout_only, as_json, top, formula, threads, runtime,
                     verbose):
    """Score cats and non-cats with a model and report AUROC, AP, TPR at low FPR and per-category results."""
    from models.artifact import ArtifactError
    from models.lite import load_scorer
    from models.metrics import evaluate_scores

    normal_all = _load(normal_files)
    anomalous_all = _load(anomalous_files)
    runtimes = ["keras", "litert"] if runtime == "both" else [runtime]
    if "keras" in runtimes:
        from models.quiet import quiet_tensorflow

        quiet_tensorflow(verbose)
    results, all_scores = {}, {}
    for name in runtimes:
        try:
            scorer = load_scorer(model_dir, name, threads)
        except ArtifactError as exc:
            raise click.ClickException(str(exc)) from None
        if formula is not None:
            scorer.formula = formula
        normal, anomalous, dropped = normal_all, anomalous_all, 0
        if heldout_only:
            normal, anomalous, dropped = _heldout_subsets(scorer.meta, normal_all, anomalous_all)
        started = time.perf_counter()
        normal_scores, _ = scorer.score_bitmaps(normal.bitmaps)
        anomalous_scores, _ = scorer.score_bitmaps(anomalous.bitmaps)
        seconds = time.perf_counter() - started
        all_scores[name] = np.concatenate([normal_scores, anomalous_scores])
        has_labels = any(w is not None for w in anomalous.words)
        result = evaluate_scores(normal_scores, anomalous_scores, scorer.suggested_threshold,
                                 category_labels(anomalous) if has_labels else None)
        result["model_version"] = scorer.version
        result["score_formula"] = scorer.formula
        result["runtime"] = name
        result["scoring_seconds"] = seconds
        if heldout_only:
            result["dropped_training_category_rows"] = dropped
        results[name] = result
    result = results[runtimes[0]]
    if runtime == "both":
        result["runtimes"] = {name: {k: r[k] for k in ("auroc", "average_precision", "tpr_at_fpr_1", "tpr_at_fpr_5",
                                                       "scoring_seconds")} for name, r in results.items()}
        result["runtimes"]["max_abs_score_diff"] = float(np.max(np.abs(all_scores["keras"] - all_scores["litert"])))
    if as_json:
        click.echo(json.dumps(result))
        return
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(f"model {scorer.version}, threshold {scorer.suggested_threshold:.4f} (flag when score > threshold), "
                  f"runtime {runtimes[0]}")
    if runtime == "both":
        k, lt = results["keras"], results["litert"]
        console.print(f"AUROC keras {k['auroc']:.4f}, litert {lt['auroc']:.4f}; max score diff "
                      f"{result['runtimes']['max_abs_score_diff']:.1e}; scoring {len(all_scores['keras']):,} sketches "
                      f"took {k['scoring_seconds']:.2f} s (keras), {lt['scoring_seconds']:.2f} s (litert)")
    console.print(_metrics_table("cats vs non-cats", {"all": result}))
    if result["per_category"]:
        console.print(_category_table(result["per_category"], top))


@click.command("cv")
@click.option("--data", "data_files", multiple=True, required=True, type=_existing_file,
              help="Cat drawings (any format; repeatable); dealt into the K folds by row.")
@click.option("--outliers", "outlier_files", multiple=True, required=True, type=_existing_file,
              help="Non-cat drawings with categories (repeatable); dealt into the K folds by category.")
@click.option("--eval-anomalous", "bitmap_files", multiple=True, type=_existing_file,
              help="Evaluation-only non-cat files (e.g. the bitmaps); their categories are never trained on.")
@click.option("--k", "k", default=4, show_default=True, type=click.IntRange(2), help="Number of folds.")
@click.option("--folds", "folds_to_run", default=None, type=click.IntRange(1),
              help="Run only the first N folds (a cheaper estimate).")
@click.option("--fold-seed", default=0, show_default=True, type=int, help="Seed of the fold assignment.")
@click.option("--seed", default=0, show_default=True, type=int, help="Training seed (initialisation, shuffling).")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(1))
@click.option("--patience", default=3, show_default=True, type=click.IntRange(1))
@click.option("--outlier-weight", default=2.0, show_default=True, type=click.FloatRange(0.0))
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--cat-jitter", default=0.0, show_default=True, type=click.FloatRange(0.0, 4.0),
              help="Smooth random displacement of the training images (std in pixels; a stroke-jitter stand-in).")
@click.option("--cat-drop", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of training images that lose a small disc of ink (a dropped-stroke stand-in).")
@click.option("--near-cat-weight", default=1.0, show_default=True, type=click.FloatRange(0.0),
              help="Loss weight of near-cat animal and face categories relative to other outliers.")
@click.option("--jigsaw-negatives", default=0.0, show_default=True, type=click.FloatRange(0.0, 2.0),
              help="Add this share of the training cats, quadrants shuffled, as outliers (synthetic non-cats).")
@click.option("--latent-dim", default=16, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=None, type=click.IntRange(1), help="TensorFlow thread pool size.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full result as JSON here (and the per-fold scores beside it as .npz).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
def cv_command(data_files, outlier_files, bitmap_files, k, folds_to_run, fold_seed, seed, epochs, patience,
               outlier_weight, augment, cat_jitter, cat_drop, near_cat_weight, jigsaw_negatives, latent_dim, threads,
               out_file, as_json, verbose):
    """Category-wise cross-validation of a training recipe: AUROC, TPR@5%FPR, per category and calibration."""
    from models.cv import FoldError, Recipe, run_cv, summary_rows, write_json
    from models.quiet import quiet_tensorflow

    quiet_tensorflow(verbose)
    console = _console()
    recipe = Recipe(outlier_weight=outlier_weight, augment=augment, cat_jitter_px=cat_jitter,
                    cat_drop_probability=cat_drop, near_cat_weight=near_cat_weight,
                    jigsaw_negatives=jigsaw_negatives, latent_dim=latent_dim,
                    epochs=epochs, patience=patience, seed=seed)
    try:
        result = run_cv(data_files, outlier_files, bitmap_files, k=k, recipe=recipe, fold_seed=fold_seed,
                        folds_to_run=folds_to_run, threads=threads,
                        scores_out=out_file.with_suffix(".npz") if out_file else None,
                        report=console.print)  # fmt: skip
    except FoldError as exc:
        raise click.BadParameter(str(exc), param_hint="--k") from None
    except (FormatError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    result["command"] = _command_line()
    if out_file is not None:
        write_json(result, out_file)
    if as_json:
        click.echo(json.dumps(result))
        return
    table = Table(title=f"{result['folds_run']} of {k} category folds: held-out cats vs unseen categories")
    for col in ("variant", "AUROC strokes", "TPR@5% strokes", "AUROC bitmaps", "TPR@5% bitmaps", "cats < 0.92",
                "worst", "flagged at conformal p95 (95% CI)"):
        table.add_column(col, justify="left" if col in ("variant", "worst") else "right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in summary_rows(result):
        table.add_row(r["variant"], fmt(r["auroc_strokes"]), fmt(r["tpr5_strokes"]), fmt(r["auroc_bitmaps"]),
                      fmt(r["tpr5_bitmaps"]), str(r["below_0.92"]), r["worst"],
                      f"{r['flagged']:.1%} ({r['ci95'][0]:.1%}-{r['ci95'][1]:.1%})")
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)


@click.group()
def main() -> None:
    """Model commands on their own (``python -m models.cli``); ``sketchwatch`` carries the same commands."""


main.add_command(train_command)
main.add_command(evaluate_command)
main.add_command(cv_command)

if __name__ == "__main__":
    main()

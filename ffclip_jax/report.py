"""The evaluation report of `ffclip evaluate`: every number as JSON, markdown tables, PNG plots; written atomically.
Reports read back (`read_report`) compare side by side (`comparison`, what `ffclip report` prints).

    report = build_report(entries, results, latent_indices, meta)
    write_report("report/", report, results, overwrite=False)
    print(comparison({"e4e": read_report("report/"), "pti": read_report("report_pti/")}))

`entries`: one dict per evaluated prompt {"prompt", "kind" ("single" or "composition"), "parts"}; `results`:
{metric: (P, N)} from `metrics.evaluate`. The directory holds
  report.json       meta, every per-example value, per-prompt and overall mean/std/median (NaN -> null)
  report.md         a table per kind (single prompts, compositions): one row per prompt and an overall row
  per_prompt.png    per-prompt bars (mean +- std) of the main metrics
  clip_vs_identity.png (faces) / clip_vs_moco.png (other domains): CLIP score against preservation, per example
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_output_dir

JSON_FILE, MARKDOWN_FILE, BARS_FILE = "report.json", "report.md", "per_prompt.png"
KINDS = ("single", "composition")
LABELS = {"clip_score": "CLIP score", "clip_score_source": "CLIP (source)", "clip_score_delta": "Δ CLIP",
          "identity": "identity", "background_mse": "BG MSE", "background_psnr": "BG PSNR (dB)",
          "background_fraction": "BG fraction", "moco_similarity": "MoCo sim.", "latent_mean_abs": "mean abs Δw",
          "latent_l2": "L2 Δw", "clip_score_parts_min": "CLIP (min part)"}
FORMATS = {"background_mse": ".2e", "latent_mean_abs": ".4f"}  # others ".3f"


def summary_stats(values: np.ndarray) -> Dict[str, Any]:
    v = np.asarray(values, np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return {"mean": None, "std": None, "median": None, "count": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
            "count": int(finite.size)}


def json_values(values) -> Any:
    """Nested lists with NaN / inf as None (strict JSON)."""
    if isinstance(values, (list, tuple, np.ndarray)):
        return [json_values(v) for v in values]
    v = float(values)
    return v if math.isfinite(v) else None


def scalar_metrics(results: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """{metric: (P, N)} of one value per example; `clip_score_parts` (P, N, K) gives `clip_score_parts_min`."""
    out = {k: v for k, v in results.items() if np.ndim(v) == 2}
    if "clip_score_parts" in results:
        parts = results["clip_score_parts"]
        has = np.isfinite(parts).any(axis=-1)
        out["clip_score_parts_min"] = np.where(has, np.nanmin(np.where(np.isfinite(parts), parts, np.inf), axis=-1),
                                               np.nan)
    return out


def build_report(entries: Sequence[Mapping[str, Any]], results: Mapping[str, np.ndarray],
                 latent_indices: Sequence[int], meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON-able report (see the module docstring)."""
    scalars = scalar_metrics(results)
    kinds = np.asarray([e["kind"] for e in entries])
    per_prompt = [{"prompt": e["prompt"], "kind": e["kind"], "parts": list(e.get("parts", [])),
                   "stats": {k: summary_stats(v[i]) for k, v in scalars.items()}} for i, e in enumerate(entries)]
    overall = {kind: {k: summary_stats(v[kinds == kind]) for k, v in scalars.items()}
               for kind in KINDS if (kinds == kind).any()}
    per_example = {k: json_values(v) for k, v in results.items()}
    return {"meta": dict(meta), "metrics": list(scalars), "latent_indices": [int(i) for i in latent_indices],
            "prompts": per_prompt, "overall": overall, "per_example": per_example}


def format_stats(stats: Mapping[str, Any], metric: str, formats: Mapping[str, str] = FORMATS) -> str:
    """"mean ± std" in the metric's format (`formats`, default ".3f"); "–" without values."""
    if stats["mean"] is None:
        return "–"
    f = formats.get(metric, ".3f")
    return f"{stats['mean']:{f}} ± {stats['std']:{f}}"


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: a header with the setup, then per kind a table with one row per prompt and an overall row."""
    meta = report["meta"]
    lines = ["# FFCLIP evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, (dict, list))]
    lines.append(f"- latents evaluated: {len(report['latent_indices'])}")
    for kind in KINDS:
        rows = [p for p in report["prompts"] if p["kind"] == kind]
        if not rows:
            continue
        metrics = [m for m in report["metrics"] if m in rows[0]["stats"] and
                   (kind == "composition" or m != "clip_score_parts_min")]
        lines += ["", f"## {'Single prompts' if kind == 'single' else 'Compositions of two training prompts'}", "",
                  "| prompt | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for row in rows:
            lines.append(f"| {row['prompt']} | " + " | ".join(format_stats(row["stats"][m], m) for m in metrics) + " |")
        overall = report["overall"][kind]
        lines.append("| **overall** | " + " | ".join(f"**{format_stats(overall[m], m)}**" for m in metrics) + " |")
    lines += ["", "Mean ± std over the latents (overall: over every latent and prompt). CLIP score: 100 × cosine "
              "with OpenAI's preprocessing; identity: ArcFace cosine source/edit; BG: outside the parsed hair region "
              "in both images, images in [0, 1], PSNR capped at 100 dB; Δw: the mapper's latent change.", ""]
    return "\n".join(lines)


def pyplot():
    import matplotlib  # slow to import: only when a report's plots are drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    """Lay out, write as PNG (110 dpi) and close a pyplot figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def label_scatter(ax, xlabel: str, ylabel: str) -> None:
    """A scatter plot's axes: labels, plain tick values (no offset), a light grid and the legend."""
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _bars(path: str, report: Mapping[str, Any]) -> None:
    plt = pyplot()

    preserve = "identity" if "identity" in report["metrics"] else "moco_similarity"
    metrics = [m for m in ("clip_score", "clip_score_delta", preserve, "background_psnr", "latent_mean_abs")
               if m in report["metrics"]]
    rows = report["prompts"]
    names = [("◆ " if r["kind"] == "composition" else "") + r["prompt"] for r in rows]
    height = max(3.0, 0.28 * len(rows) + 1.2)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 2.5, height), sharey=True, squeeze=False)
    y = np.arange(len(rows))
    for ax, m in zip(axes[0], metrics):
        means = [r["stats"][m]["mean"] for r in rows]
        stds = [r["stats"][m]["std"] for r in rows]
        colors = ["tab:orange" if r["kind"] == "composition" else "tab:blue" for r in rows]
        ax.barh(y, [np.nan if v is None else v for v in means], xerr=[0 if s is None else s for s in stds],
                color=colors, alpha=0.85, capsize=2)
        ax.set_title(LABELS.get(m, m), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(names, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("Per-prompt means ± std (◆ = composition)", fontsize=10)
    save_figure(fig, path)


def scatter_name(report: Mapping[str, Any]) -> str:
    return "clip_vs_identity.png" if "identity" in report["metrics"] else "clip_vs_moco.png"


def _scatter(path: str, report: Mapping[str, Any], results: Mapping[str, np.ndarray]) -> None:
    plt = pyplot()

    preserve = "identity" if "identity" in report["metrics"] else "moco_similarity"
    fig, ax = plt.subplots(figsize=(6.5, 5))
    kinds = np.asarray([r["kind"] for r in report["prompts"]])
    for kind, color in zip(KINDS, ("tab:blue", "tab:orange")):
        sel = kinds == kind
        if not sel.any():
            continue
        ax.scatter(results[preserve][sel].ravel(), results["clip_score"][sel].ravel(), s=8, alpha=0.35, color=color,
                   label=f"{kind} (per example)")
        ax.scatter(np.nanmean(results[preserve][sel], axis=1), np.nanmean(results["clip_score"][sel], axis=1), s=40,
                   color=color, edgecolor="black", label=f"{kind} (prompt mean)")
    label_scatter(ax, LABELS[preserve] + " (source vs edit)", "CLIP score of the edit with its prompt")
    save_figure(fig, path)


def write_report(output: str, report: Mapping[str, Any], results: Mapping[str, np.ndarray], *,
                 overwrite: bool = False) -> List[str]:
    """Write report.json, report.md and the PNGs into `output` atomically (all or nothing); returns the file
    names."""
    files = [JSON_FILE, MARKDOWN_FILE, BARS_FILE, scatter_name(report)]
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, JSON_FILE), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, allow_nan=False, ensure_ascii=False)
        with open(os.path.join(tmp, MARKDOWN_FILE), "w", encoding="utf-8") as f:
            f.write(markdown(report))
        _bars(os.path.join(tmp, BARS_FILE), report)
        _scatter(os.path.join(tmp, files[-1]), report, results)
    return files


def read_report(path: str) -> Dict[str, Any]:
    """The report.json of a report directory (or the file itself), checked to be an `ffclip evaluate` report."""
    file = os.path.join(path, JSON_FILE) if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: no readable {JSON_FILE} ({e.strerror})") from None
    except ValueError as e:
        raise InputError(f"{file}: not JSON ({e})") from None
    if not isinstance(report, dict) or not {"meta", "metrics", "overall"} <= set(report):
        raise InputError(f"{file}: not an `ffclip evaluate` report (expected meta, metrics and overall)")
    return report


def comparison(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per kind of prompt, one row per report (its name) of the overall mean ± std of each metric the
    reports share."""
    lines = []
    for kind in KINDS:
        rows = {name: r["overall"][kind] for name, r in reports.items() if kind in r["overall"]}
        if not rows:
            continue
        shared = [m for m in next(iter(reports.values()))["metrics"] if all(m in row for row in rows.values())]
        lines += [f"## {'Single prompts' if kind == 'single' else 'Compositions of two training prompts'}", "",
                  "| report | " + " | ".join(LABELS.get(m, m) for m in shared) + " |",
                  "|---|" + "---:|" * len(shared)]
        lines += [f"| {name} | " + " | ".join(format_stats(row[m], m) for m in shared) + " |"
                  for name, row in rows.items()]
        lines.append("")
    return "\n".join(lines)

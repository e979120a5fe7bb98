"""Figures drawn from saved records (so any figure can be redrawn without re-running a model).

Every figure says what it shows and on how much data in its title (model, dataset, samples or
tokens), labels every line in a legend, uses integer ticks for layers, shows the measured spread
(p10..p90) as error bars, and picks TFLOPs, GFLOPs or MFLOPs by the size of the model.
"""

from __future__ import annotations

from pathlib import Path

STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    _plt().close(fig)
    return path


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def flops_unit(tflops: float) -> tuple[str, float]:
    """("TFLOPs" | "GFLOPs" | "MFLOPs", factor from TFLOPs) for a value in TFLOPs."""
    if tflops >= 0.1:
        return "TFLOPs", 1.0
    if tflops >= 1e-4:
        return "GFLOPs", 1e3
    return "MFLOPs", 1e6


def plot_calibration(record: dict, path: str | Path) -> Path:
    """KL vs K on a log scale with each eta and its K in the legend (the paper's Fig. 8b); accuracy
    vs K (Fig. 8a) beside it when the record has it."""
    plt = _plt()
    ks = sorted(int(k) for k in record["kl"])
    kl = [max(record["kl"][str(k)], 1e-12) for k in ks]
    kmax = [max(record["kl_max"][str(k)], 1e-12) for k in ks]
    acc = record.get("accuracy")
    n = record["num_layers"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(12 if acc else 6.5, 4.6), squeeze=False)
        ax = axes[0][0]
        ax.plot(ks, kl, "o-", color="tab:blue", label="mean KL")
        ax.plot(ks, kmax, ".--", color="tab:blue", alpha=0.45, label="max KL")
        colours = plt.get_cmap("tab10")
        for i, eta in enumerate(record["etas"]):
            k = record["chosen"][str(eta)]
            colour = colours((i + 1) % 10)
            label = f"η={eta:g} → K={k}" if k < n else f"η={eta:g}: no K (no withdrawal)"
            ax.axhline(eta, color=colour, lw=1, ls=":", label=label)
            if k < n:
                ax.plot([k], [max(record["kl"][str(k)], 1e-12)], "*", color=colour, ms=14, zorder=5)
        _integer_ticks(ax)
        ax.set_yscale("log")
        ax.set_xlabel("withdrawal layer K")
        ax.set_ylabel("KL(P_vtw ‖ P_base)")
        tokens = record.get("tokens", 1)
        ax.set_title(f"KL at each K: {record['model']} on {record['dataset']}/{record.get('split', '?')}\n"
                     f"{record['samples']} samples, first {tokens} output token{'s' if tokens != 1 else ''}")
        ax.legend(loc="best")
        if acc:
            ax2 = axes[0][1]
            ka = sorted(int(k) for k in acc)
            ax2.plot(ka, [acc[str(k)] for k in ka], "o-", label="VTW at K")
            if record.get("baseline_accuracy") is not None:
                ax2.axhline(record["baseline_accuracy"], color="k", ls="--", lw=1, label="stock model")
            _integer_ticks(ax2)
            ax2.set_xlabel("withdrawal layer K")
            ax2.set_ylabel("accuracy")
            ax2.set_ylim(0, 1.02)
            m = record.get("accuracy_samples") or record["samples"]
            ax2.set_title(f"accuracy at each K: {record['dataset']}/{record.get('split', '?')}, {m} samples")
            ax2.legend(loc="best")
        fig.tight_layout()
        return _save(fig, path)


_TYPE_COLOURS = {"system": "tab:blue", "vision": "tab:red", "instruction": "tab:green", "output": "tab:purple"}


def plot_attention(by_layer: list[dict], by_token: list[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """Figs. 4-5: attention mass per token type across layers and across output tokens (mean ± std
    over samples; output tokens only as far as the answers go, EOS included)."""
    plt = _plt()
    paths = []
    for rows, xkey, xlabel, name, what in (
        (by_layer, "layer", "decoder layer", "attention_by_layer.png", "by layer (mean over output tokens)"),
        (by_token, "output_index", "output token (0 = first)", "attention_by_token.png",
         "by output token (mean over layers)"),
    ):
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(7, 4.4))
            for t, colour in _TYPE_COLOURS.items():
                pts = sorted((r[xkey], r["mean"], r["std"]) for r in rows if r["type"] == t)
                xs = [p[0] for p in pts]
                m = [p[1] for p in pts]
                sd = [p[2] for p in pts]
                ax.plot(xs, m, "-o", ms=3, color=colour, label=f"{t} tokens")
                ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=colour,
                                alpha=0.15)
            _integer_ticks(ax)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("attention mass (mean over heads)")
            ax.set_ylim(0, 1)
            if xkey == "output_index" and rows:
                counts = {r["output_index"]: r.get("samples") for r in rows}
                if len(set(counts.values())) > 1:  # answers of different lengths: say how many are left
                    ax.set_xlabel(f"{xlabel}; samples per token: "
                                  + ", ".join(str(counts[i]) for i in sorted(counts)))
            ax.set_title(f"attention of output tokens {what}\n{title}")
            ax.legend(loc="best")
            fig.tight_layout()
            paths.append(_save(fig, Path(out_dir) / name))
    return paths


def _err(row: dict, key: str, scale: float):
    """[[median - p10], [p90 - median]] of a measured row (spread key: prefill or total), or None."""
    spread = (row.get("spread") or {}).get(key)
    if not spread:
        return None
    med = spread["median"]
    return [[(med - spread["p10"]) * scale], [(spread["p90"] - med) * scale]]


def plot_profile(data: dict, path: str | Path) -> Path:
    """Bars of FLOPs and (when measured) prefill and end-to-end latency, with p10/p90 error bars, for
    baseline / VTW / FastV; for a K sweep, FLOPs and prefill vs K."""
    plt = _plt()
    present = data.get("rows") or [m for m in ("baseline", "vtw", "fastv") if m in data]
    rows = [data[m] for m in present]
    measured = "prefill_s" in rows[0]
    unit, factor = flops_unit(rows[0]["tflops"])
    fastv = data.get("fastv_settings") or {}
    what = f"{data['tokens']['vision']} vision + {data['tokens']['text']} text tokens"
    if data.get("source"):
        what += f", {data['source']}"
    if measured:
        first = rows[0].get("spread", {})
        what += f", median of {first.get('repeats', '?')} runs"
    with plt.rc_context(STYLE):
        if data.get("sweep"):
            sweep = data["sweep"]
            fig, ax = plt.subplots(figsize=(7.5, 4.6))
            ks = [r["k"] for r in sweep]
            handles = ax.plot(ks, [r["tflops"] * factor for r in sweep], "o-", color="tab:blue",
                              label=f"VTW {unit}")
            if "baseline" in data:
                handles.append(ax.axhline(data["baseline"]["tflops"] * factor, color="k", ls="--", lw=1,
                                          label=f"baseline {unit}"))
            if "fastv" in data:
                handles.append(ax.axhline(data["fastv"]["tflops"] * factor, color="tab:orange", ls=":", lw=1.5,
                                          label=f"FastV {unit} (K={fastv.get('k')}, drops "
                                                f"{fastv.get('ratio', 0):.0%})"))
            ax.set_xlabel("withdrawal layer K")
            ax.set_ylabel(unit)
            _integer_ticks(ax)
            if measured:
                ax2 = ax.twinx()
                errs = [_err(r, "prefill", 1000) for r in sweep]
                yerr = None
                if all(errs):
                    yerr = [[e[0][0] for e in errs], [e[1][0] for e in errs]]
                cont = ax2.errorbar(ks, [r["prefill_s"] * 1000 for r in sweep], yerr=yerr, fmt="s--",
                                    color="tab:red", capsize=3, label="VTW prefill (ms, p10..p90)")
                handles.append(cont)
                ax2.set_ylabel("prefill (ms)", color="tab:red")
            ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="best")
            ax.set_title(f"cost vs K: {data['model']}\n{what}")
        else:
            cols = 3 if measured else 1
            fig, axes = plt.subplots(1, cols, figsize=(4.6 * cols, 4.4), squeeze=False)
            label_of = {"baseline": lambda r: "baseline", "vtw": lambda r: f"VTW K={r.get('k')}",
                        "vtw-random": lambda r: f"VTW† K≈{r.get('k')}", "rand": lambda r: f"Rand K={r.get('k')}",
                        "fastv": lambda r: f"FastV K={r.get('k')}\ndrops {fastv.get('ratio', 0):.0%}"}
            colour_of = {"baseline": "grey", "vtw": "tab:blue", "vtw-random": "tab:cyan", "rand": "tab:purple",
                         "fastv": "tab:orange"}
            names = [label_of[m](r) for m, r in zip(present, rows)]
            colours = [colour_of[m] for m in present]
            axes[0][0].bar(names, [r["tflops"] * factor for r in rows], color=colours)
            axes[0][0].set_ylabel(unit)
            axes[0][0].set_title(f"{unit} (by {data.get('method')})")
            if measured:
                for ax, key, label in ((axes[0][1], "prefill", "prefill (ms)"),
                                       (axes[0][2], "total", "end-to-end (ms)")):
                    vals = [r[f"{key}_s"] * 1000 for r in rows]
                    errs = [_err(r, key, 1000) for r in rows]
                    yerr = [[e[0][0] for e in errs], [e[1][0] for e in errs]] if all(errs) else None
                    ax.bar(names, vals, color=colours, yerr=yerr, capsize=4,
                           error_kw={"label": "p10..p90"} if yerr else None)
                    ax.set_ylabel(label)
                    ax.set_title(f"{label}, median, p10..p90 bars")
            for ax in axes[0]:
                ax.tick_params(axis="x", labelsize=9)
            fig.suptitle(f"{data['model']}: {what}")
        fig.tight_layout()
        return _save(fig, path)

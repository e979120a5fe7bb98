"""Figures drawn from saved records (so any figure can be redrawn without re-running a model)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(record: dict, path: str | Path) -> Path:
    """KL vs K on a log scale with each eta drawn (the paper's Fig. 8b); accuracy vs K (Fig. 8a) if present."""
    plt = _plt()
    ks = sorted(int(k) for k in record["kl"])
    kl = [max(record["kl"][str(k)], 1e-12) for k in ks]
    kmax = [max(record["kl_max"][str(k)], 1e-12) for k in ks]
    acc = record.get("accuracy")
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(10 if acc else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(ks, kl, "o-", label="mean KL")
    ax.plot(ks, kmax, ".--", alpha=0.5, label="max KL")
    for eta in record["etas"]:
        k = record["chosen"][str(eta)]
        ax.axhline(eta, color="grey", lw=0.8, ls=":")
        note = f"η={eta:g} → K={k}" if k < record["num_layers"] else f"η={eta:g}: none"
        ax.annotate(note, (ks[0], eta), textcoords="offset points", xytext=(2, 2), fontsize=7, color="grey")
        if k < record["num_layers"]:
            ax.plot([k], [max(record["kl"][str(k)], 1e-12)], "r*", ms=12)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("withdrawal layer K")
    ax.set_ylabel("KL(P_vtw || P_base)")
    ax.set_title(f"{record['model']} on {record['dataset']} ({record['samples']} samples)", fontsize=9)
    ax.legend(fontsize=7)
    if acc:
        ax2 = axes[0][1]
        ka = sorted(int(k) for k in acc)
        ax2.plot(ka, [acc[str(k)] for k in ka], "o-", label="VTW")
        if record.get("baseline_accuracy") is not None:
            ax2.axhline(record["baseline_accuracy"], color="k", ls="--", lw=1, label="stock model")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("withdrawal layer K")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_TYPE_COLOURS = {"system": "tab:blue", "vision": "tab:red", "instruction": "tab:green", "output": "tab:purple"}


def plot_attention(by_layer: list[dict], by_token: list[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """Figs. 4-5: attention mass per token type across layers and across output tokens, with spread."""
    plt = _plt()
    paths = []
    for rows, xkey, xlabel, name in (
        (by_layer, "layer", "layer", "attention_by_layer.png"),
        (by_token, "output_index", "output token", "attention_by_token.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for t, colour in _TYPE_COLOURS.items():
            pts = sorted((r[xkey], r["mean"], r["std"]) for r in rows if r["type"] == t)
            xs = [p[0] for p in pts]
            m = [p[1] for p in pts]
            sd = [p[2] for p in pts]
            ax.plot(xs, m, "-o", ms=3, color=colour, label=t)
            ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=colour,
                            alpha=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("attention (mean over heads" + (", output tokens)" if xkey == "layer" else ", layers)"))
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = Path(out_dir) / name
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_profile(data: dict, path: str | Path) -> Path:
    """Bars of TFLOPs (and latency when measured) for baseline / VTW / FastV; curves vs K for a sweep."""
    plt = _plt()
    rows = [data["baseline"], data["vtw"], data["fastv"]]
    measured = "prefill_s" in data["baseline"]
    if data.get("sweep"):
        sweep = data["sweep"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ks = [r["k"] for r in sweep]
        ax.plot(ks, [r["tflops"] for r in sweep], "o-", label="VTW TFLOPs")
        ax.axhline(data["baseline"]["tflops"], color="k", ls="--", lw=1, label="baseline")
        ax.axhline(data["fastv"]["tflops"], color="tab:orange", ls=":", lw=1, label="FastV")
        ax.set_xlabel("withdrawal layer K")
        ax.set_ylabel("TFLOPs")
        if measured:
            ax2 = ax.twinx()
            ax2.plot(ks, [r["prefill_s"] * 1000 for r in sweep], "s--", color="tab:red", label="VTW prefill (ms)")
            ax2.set_ylabel("prefill (ms)", color="tab:red")
        ax.legend(fontsize=7, loc="upper left")
    else:
        cols = 2 if measured else 1
        fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.4), squeeze=False)
        names = ["baseline", f"VTW K={data['vtw'].get('k')}", f"FastV K={data['fastv'].get('k')}"]
        axes[0][0].bar(names, [r["tflops"] for r in rows], color=["grey", "tab:blue", "tab:orange"])
        axes[0][0].set_ylabel("TFLOPs")
        if measured:
            axes[0][1].bar(names, [r["prefill_s"] * 1000 for r in rows], color=["grey", "tab:blue", "tab:orange"])
            axes[0][1].set_ylabel("prefill (ms)")
        for ax in axes[0]:
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{data['model']} ({data['tokens']['vision']} vision + {data['tokens']['text']} text)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

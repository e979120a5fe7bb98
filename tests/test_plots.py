"""Figures a researcher would keep: legends for every line, integer K ticks, p10/p90 error bars, titles
that say what and how many, GFLOPs for tiny models, attention only as far as the answers go."""

from __future__ import annotations

import json

import pytest
import torch

from vtwctl import plots


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions draw (captured instead of closed)."""
    from matplotlib.figure import Figure

    got = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: got.append(fig))
    yield got
    import matplotlib.pyplot as plt

    plt.close("all")


def _legend(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def _integer_ticks(ax):
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return ticks and all(float(t).is_integer() for t in ticks)


CAL = {"model": "demo", "dataset": "shapes", "split": "validation", "samples": 20, "tokens": 1, "num_layers": 8,
       "etas": [0.006, 0.005, 0.004, 0.003], "chosen": {"0.006": 4, "0.005": 4, "0.004": 6, "0.003": 6},
       "kl": {"1": 0.6, "2": 0.2, "3": 0.02, "4": 0.0045, "5": 0.0047, "6": 0.0014, "7": 0.0003},
       "kl_max": {"1": 0.9, "2": 0.5, "3": 0.05, "4": 0.01, "5": 0.01, "6": 0.004, "7": 0.001},
       "accuracy": {str(k): 0.5 + k / 20 for k in range(1, 8)}, "baseline_accuracy": 0.8, "accuracy_samples": 50}


def test_calibration_plot_has_one_legend_entry_per_eta(figures):
    plots.plot_calibration(CAL, "kl.png")
    kl_ax, acc_ax = figures[0].axes
    labels = _legend(kl_ax)
    for eta, k in (("0.006", 4), ("0.005", 4), ("0.004", 6), ("0.003", 6)):
        assert f"η={eta} → K={k}" in labels
    assert len(kl_ax.texts) == 0  # no annotations stacked on each other
    assert _integer_ticks(kl_ax) and _integer_ticks(acc_ax)
    assert "shapes/validation" in kl_ax.get_title() and "20 samples" in kl_ax.get_title()
    assert "50 samples" in acc_ax.get_title() and "stock model" in _legend(acc_ax)
    assert kl_ax.title.get_fontsize() >= 10 and kl_ax.xaxis.label.get_fontsize() >= 10


def _row(method, k, tflops, prefill, total, spread=0.2):
    def stat(m):
        return {"median": m, "p10": m * (1 - spread), "p90": m * (1 + spread / 2), "min": m * 0.7, "samples": []}

    return {"method": method, "k": k, "tflops": tflops, "ratio": 1.0, "prefill_s": prefill, "total_s": total,
            "spread": {"prefill": stat(prefill), "total": stat(total), "repeats": 5, "warmup": 1}}


def _profile(sweep=False):
    d = {"model": "demo", "k": 4, "tokens": {"vision": 144, "text": 31}, "method": "exact",
         "fastv_settings": {"k": 2, "ratio": 0.5}, "source": "shapes/test sample 0",
         "baseline": _row("baseline", None, 0.0021, 0.010, 0.050), "vtw": _row("vtw", 4, 0.0012, 0.006, 0.030),
         "fastv": _row("fastv", 2, 0.0015, 0.008, 0.040)}
    if sweep:
        d["sweep"] = [_row("vtw", k, 0.001 + k * 1e-4, 0.004 + k * 1e-3, 0.03) for k in (2, 4, 6)]
    return d


def test_profile_bars_have_p10_p90_error_bars_and_gflops(figures):
    plots.plot_profile(_profile(), "p.png")
    flops_ax, prefill_ax, total_ax = figures[0].axes
    assert flops_ax.get_ylabel() == "GFLOPs"  # 0.0021 TFLOPs is shown as 2.1 GFLOPs
    assert [round(p.get_height(), 6) for p in flops_ax.patches] == [2.1, 1.2, 1.5]
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in prefill_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    # the baseline's bar goes from p10 to p90 (in ms): 10 * 0.8 .. 10 * 1.1
    (x0, lo), (_, hi) = segments[0]
    assert lo == pytest.approx(8.0) and hi == pytest.approx(11.0)
    assert any(isinstance(c, ErrorbarContainer) for c in total_ax.containers)
    assert "144 vision + 31 text tokens" in figures[0]._suptitle.get_text()
    assert "median of 5 runs" in figures[0]._suptitle.get_text()


def test_k_sweep_plot_has_every_line_in_the_legend_and_integer_ticks(figures):
    plots.plot_profile(_profile(sweep=True), "s.png")
    ax = figures[0].axes[0]
    labels = _legend(ax)
    assert any(t.startswith("VTW prefill") for t in labels) and any(t.startswith("VTW GFLOPs") for t in labels)
    assert any("FastV" in t and "drops 50%" in t for t in labels) and any("baseline" in t for t in labels)
    assert _integer_ticks(ax)


def test_attention_report_ignores_tokens_past_the_end():
    from vtwctl.attention import TYPES, AttentionReport

    nan = float("nan")
    # sample 0 answers in 2 tokens (all mass on system tokens), sample 1 in 4 (all on vision); one layer
    b = torch.full((2, 4, 1, 4), nan)
    b[0, :2] = torch.tensor([1.0, 0, 0, 0])
    b[1, :4] = torch.tensor([0, 1.0, 0, 0])
    rep = AttentionReport(model="m", datasets=["shapes"], k=None, sample_ids=["a", "b"], beta=b, lengths=[2, 4])
    tok = rep.by_token()
    assert sorted({r["output_index"] for r in tok}) == [0, 1, 2, 3]
    sys0 = {r["output_index"]: (r["mean"], r["samples"]) for r in tok if r["type"] == "system"}
    assert sys0 == {0: (0.5, 2), 1: (0.5, 2), 2: (0.0, 1), 3: (0.0, 1)}  # tokens 2, 3: sample 1 only
    lay = {r["type"]: r["mean"] for r in rep.by_layer()}
    assert lay["system"] == pytest.approx(0.5) and lay["vision"] == pytest.approx(0.5)  # each sample counts once
    assert set(lay) == set(TYPES)
    assert rep.title() == "m on shapes (2 samples)"


def test_attention_cli_stops_at_each_answers_end(tmp_path, demo_loaded):
    """The demo model answers in a few tokens: beta covers exactly the tokens each answer has (the EOS
    included), as counted by generate(), not --max-new-tokens of them."""
    from console import script
    from vtwctl import generate, tasks

    res = script("attention", "--samples", "2", "--max-new-tokens", "12", "--out", tmp_path / "att", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads(res.stdout)
    loaded, task = demo_loaded, tasks.get("shapes")
    want = [generate(loaded, loaded.sample_inputs(s), max_new_tokens=12).new_tokens[0]
            for s in task.load("test", 2, 0, None)]
    assert d["output_tokens"] == want and max(want) < 12
    assert max(r["output_index"] for r in d["by_token"]) == max(want) - 1

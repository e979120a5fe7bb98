"""SparseVLM: the selection's tensor functions against a transcription, written here on plain tensors, of the
authors' code (Gumpest/SparseVLMs, main 26a5f48, the default ``USE_VERSION=1_0`` path: ``score.py``
``attn_postprocess_topk``, ``utils.py`` ``cluster_and_merge``, the rater and merge blocks of
``modelling_sparse_llama.py``; not engine/policies/sparsevlm.py), and the policy on the engine against the
masked reference: one stage (runs on today's engine) and several stages (skipped until ``Policy.stages``
exists)."""

from __future__ import annotations

import math

import pytest
import torch

from reference import decoder_layers, extend, reference_stages
from vtwctl.engine.hooks import apply
from vtwctl.engine.policies import Policy, sparsevlm
from vtwctl.engine.policies.sparsevlm import SparseVLM
from vtwctl.testing import IMAGE_ID, VIDEO_ID, tiny_inputs, tiny_model

SUPPRESS = list(range(250, 256))
MULTI_STAGE = pytest.mark.skipif(not hasattr(Policy, "stages"),
                                 reason="the multi-stage engine (Policy.stages, Tokens.index/layer) is not here yet")


# -- the authors' code, transcribed (batch 1, one image at v_token_start, text from text_token_start on) -------
def authors_raters(hidden_states, v_token_start, text_token_start):
    """modelling_sparse_llama.py, "Select Text Raters": t_token_idx (torch.where over [1, T])."""
    v_t = hidden_states[:, v_token_start:text_token_start, :]
    t_t = hidden_states[:, text_token_start:, :]
    m_v_t = v_t @ t_t.transpose(1, 2)
    m_v_t = m_v_t.softmax(2).mean(1)
    return torch.where(m_v_t > m_v_t.mean())


def authors_topk(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, count):
    """score.py attn_postprocess_topk with ``sparse_token_list[layer_dict[layer_idx]] = count``."""
    self_attn_weights = self_attn_weights.mean(1)
    t_token_idx = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, t_token_idx, v_token_start:v_token_start + v_token_num]
    relation_vis_text = relation_vis_text.mean(1)
    s_flag = True
    if v_token_num != 0:
        mask = torch.zeros_like(relation_vis_text, dtype=bool)
        _, indices = torch.topk(relation_vis_text, min(count, v_token_num - 1), dim=1)
        mask[0][indices] = 1
    else:
        mask = torch.ones_like(relation_vis_text, dtype=bool)
        s_flag = False
    return mask, s_flag, relation_vis_text


def authors_attention(query, key, scale=None):
    """utils.py scaled_dot_product_attention (is_causal, no mask): the softmax weights [1, H, L, L]."""
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    attn_bias = torch.zeros(L, S, dtype=query.dtype)
    temp_mask = torch.ones(L, S, dtype=torch.bool).tril(diagonal=0)
    attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias
    return torch.softmax(attn_weight, dim=-1)


def authors_cluster_and_merge(x, cluster_num, noise):
    """utils.py cluster_and_merge (einops rearranges written as indexing; ``noise`` for ``rand * 1e-6``)."""
    B, N, C = x.shape
    distance = (x[:, :, None, :] - x[:, None, :, :]).norm(dim=-1, p=2)
    dist_matrix = distance / (C ** 0.5)
    dist_nearest, index_nearest = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    density = density + noise
    mask = density[:, None, :] > density[:, :, None]
    mask = mask.type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, index_parent = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)
    dist_matrix = dist_matrix[torch.arange(B)[:, None], index_down]  # index_points
    idx_cluster = dist_matrix.argmin(dim=1)
    idx_batch = torch.arange(B)[:, None].expand(B, cluster_num)
    idx_tmp = torch.arange(cluster_num)[None, :].expand(B, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)
    token_weight = x.new_ones(B, N, 1)
    idx = idx_cluster + torch.arange(B)[:, None] * cluster_num
    all_weight = token_weight.new_zeros(B * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(B * N), source=token_weight.reshape(B * N, 1))
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]
    x_merged = x.new_zeros(B * cluster_num, C)
    source = x * norm_weight
    x_merged.index_add_(dim=0, index=idx.reshape(B * N), source=source.reshape(B * N, C).type(x.dtype))
    return x_merged.reshape(B, cluster_num, C)


def authors_merge(layer_output, policy, pred_score_vis, relation_vis_text, noise):
    """modelling_sparse_llama.py, "merge and cluster" (s_flag): the recycled tokens [1, c, C]."""
    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)
    total_sparse_token = layer_output[:, total_sparse_token_idx[0], :]
    merge_token_idx_stage1 = torch.where(pred_score_vis == 0)[1]
    merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
    merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * 0.3) + 1
    merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
    merge_token_stage2 = total_sparse_token[:, merge_token_stage2_idx, :]
    cluster_num = int(merge_token_stage2.shape[1] / 10) + 1
    return authors_cluster_and_merge(merge_token_stage2, cluster_num, noise)


# -- the tensor functions against the transcription ----------------------------------------------------------
def layout(pre=5, vision=40, text=11, hidden=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = pre + vision + text
    states = torch.randn(1, n, hidden, generator=g) * torch.linspace(0.5, 2.0, n)[None, :, None]
    is_vision = torch.zeros(n, dtype=torch.bool)
    is_vision[pre:pre + vision] = True
    is_text = torch.zeros(n, dtype=torch.bool)
    is_text[pre + vision:] = True
    return states, is_vision, is_text, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raters_match_the_authors(seed):
    states, vision, text, _ = layout(seed=seed)
    ours = sparsevlm.rater_mask(states[0], vision, text)
    idx = authors_raters(states, 5, 45)[1] + 45
    expect = torch.zeros_like(vision)
    expect[idx] = True
    assert torch.equal(ours, expect) and 0 < int(ours.sum()) < int(text.sum())


@pytest.mark.parametrize("count", [12, 60])  # 60 > 40 vision tokens: min(count, V - 1) keeps 39
def test_two_stages_of_scores_and_kept_sets_match_the_authors(count):
    states, vision, text, g = layout()
    n, heads, kv_heads, d = states.shape[1], 4, 2, 8
    raters = sparsevlm.rater_mask(states[0], vision, text)
    t_token_idx = authors_raters(states, 5, 45)
    q = torch.randn(heads, n, d, generator=g)
    k = torch.randn(kv_heads, n, d, generator=g)
    # stage 1 on the whole sequence
    attn = authors_attention(q[None], k.repeat_interleave(2, 0)[None])
    mask, s_flag, relation = authors_topk(attn, 5, 40, 45, t_token_idx, count)
    index = torch.arange(n)
    allowed = index[None, :] <= index[:, None]
    scores = sparsevlm.rater_attention(q, k, d ** -0.5, allowed, raters)
    assert torch.allclose(scores[vision], relation[0], atol=1e-6)
    keep = sparsevlm.stage_keep(scores, vision, count)
    assert torch.equal(keep[vision], mask[0]) and int(keep.sum()) == min(count, 39)
    # stage 2 on the compacted sequence (the authors) = the kept tokens at their indices (ours)
    cur = ~vision | keep
    v2 = int(keep.sum())
    q2, k2 = torch.randn(heads, int(cur.sum()), d, generator=g), torch.randn(kv_heads, int(cur.sum()), d, generator=g)
    attn2 = authors_attention(q2[None], k2.repeat_interleave(2, 0)[None])
    mask2, _, relation2 = authors_topk(attn2, 5, v2, 5 + v2, t_token_idx, 7)
    idx2 = cur.nonzero().squeeze(1)
    allowed2 = idx2[None, :] <= idx2[:, None]
    scores2 = sparsevlm.rater_attention(q2, k2, d ** -0.5, allowed2, raters[idx2])
    assert torch.allclose(scores2[vision[idx2]], relation2[0], atol=1e-6)
    assert torch.equal(sparsevlm.stage_keep(scores2, vision[idx2], 7)[vision[idx2]], mask2[0])


@pytest.mark.parametrize("dropped", [1, 9, 35])  # one recycled token, a few, several clusters
def test_recycling_matches_the_authors(dropped):
    states, vision, text, g = layout(vision=40)
    scores = torch.rand(states.shape[1], generator=g)
    keep = sparsevlm.stage_keep(scores, vision, 40 - dropped)
    drop = vision & ~keep
    chosen_n = int(dropped * 0.3) + 1
    noise = torch.rand(chosen_n, generator=g) * 1e-6
    merged, chosen = sparsevlm.recycle(states[0], drop, scores, noise=noise)
    policy = (~drop).float()[None]
    expect = authors_merge(states, policy, keep[vision][None].float(), scores[vision][None], noise)
    assert merged.shape == (int(chosen_n / 10) + 1, states.shape[-1]) and len(chosen) == chosen_n
    assert torch.allclose(merged, expect[0], atol=1e-6)
    assert set(chosen.tolist()) <= set(drop.nonzero().squeeze(1).tolist())


def test_counts_per_layer_and_settings():
    assert sparsevlm.DEFAULTS == {"layers": (2, 6, 15), "retain": 192}
    per_layer = sparsevlm.vision_by_layer(32, 576, 66)
    assert per_layer == [576] * 3 + [300] * 4 + [200] * 9 + [110] * 16  # tokens leave after layers 2, 6, 15
    assert sum(per_layer) / 32 == 202.75  # the authors' comment "2*576 4*300 10*200 16*110" averages 191
    assert sparsevlm.vision_by_layer(32, 576, 66, retain=64)[-1] == 17
    assert sparsevlm.vision_by_layer(6, 5, 3, layers=(1, 2, 4), counts=(10, 2, 9)) == [5, 5, 4, 2, 2, 1]
    assert sparsevlm.kept_after(1, 10) == 0 and sparsevlm.kept_after(0, 10) == 0
    p = SparseVLM()
    assert (p.stages, p.k, p.observe_layers, p.counts) == ((3, 7, 16), 3, (0, 2, 6, 15), (300, 200, 110))
    assert SparseVLM(retain=128).counts == (303, 110, 36)
    for kw in (dict(retain=100), dict(layers=(6, 2)), dict(layers=(2, 6), counts=(1, 2, 3))):
        with pytest.raises(ValueError):
            SparseVLM(**kw)
    from vtwctl.engine import policies
    assert policies.get("sparsevlm") is SparseVLM


# -- on the engine: the reference selection and the masked reference ------------------------------------------
def staged_forward(model, x, drops: dict[int, torch.Tensor], **kwargs):
    """The stock model with the keys in ``drops[s]`` hidden from every layer >= s (no slicing, no cache)."""
    return reference_stages(model, x, sorted(drops.items()), **kwargs)


def reference_drops(model, x, layers, counts):
    """{stage layer: [B, S] bool}: the authors' rule on each row's current tokens (their contiguous layout),
    the attention of an eager copy of ``model`` with the earlier stages' tokens hidden; the raters from the
    embeddings through layer 0's input norm (what the policy observes)."""
    n_layers = len(decoder_layers(model).layers)
    eager = tiny_model(model.config.model_type, attn_implementation="eager", num_layers=n_layers)
    eager.load_state_dict(model.state_dict())
    ids, valid = x["input_ids"], x["attention_mask"].bool()
    vision = (ids == IMAGE_ID) | (ids == VIDEO_ID)
    with torch.no_grad():
        embeds = decoder_layers(eager).layers[0].input_layernorm(
            eager(**x, use_cache=False, output_hidden_states=True).hidden_states[0])
    drops, gone = {}, torch.zeros_like(vision)
    for layer, count in zip(layers, counts, strict=True):
        attn = staged_forward(eager, x, drops, output_attentions=True).attentions[layer]
        drop = torch.zeros_like(vision)
        for b in range(ids.shape[0]):
            real = valid[b].nonzero().squeeze(1)
            v = vision[b, real].nonzero().squeeze(1)
            if len(v) == 0:
                continue
            v_start, text_start = int(v[0]), int(v[-1]) + 1
            t_token_idx = authors_raters(embeds[b, real][None], v_start, text_start)
            cur = real[~gone[b, real]]  # the row's current tokens, as the authors' compacted sequence
            cv = vision[b, cur].nonzero().squeeze(1)
            a = attn[b][:, cur][:, :, cur][None]
            mask, _, _ = authors_topk(a, int(cv[0]), len(cv), int(cv[-1]) + 1, t_token_idx, count)
            drop[b, cur[cv[~mask[0]]]] = True
        drops[layer + 1] = drop
        gone |= drop
    return drops


def run_policy(model, x, policy, steps=3):
    """Logits, greedy tokens, each select's (index, drop) and the cache of ``policy`` on the engine."""
    seen = []
    select = policy.select

    def spy(tokens):
        out = select(tokens)
        seen.append((getattr(tokens, "index", None), out.cpu()))
        return out

    policy.select = spy
    with torch.no_grad(), apply(model, policy, lo=1, what="SparseVLM K"):
        logits = model(**x).logits
        gen = model.generate(**x, max_new_tokens=steps, do_sample=False, suppress_tokens=SUPPRESS,
                             return_dict_in_generate=True)
    return logits, gen.sequences[:, x["input_ids"].shape[1]:], seen, gen.past_key_values


def in_call(index, drop, shape):
    """A selection over the current tokens as [B, S] over the call's tokens."""
    if index is None:
        return drop
    full = torch.zeros(shape, dtype=torch.bool)
    for b in range(shape[0]):
        ok = index[b] >= 0
        full[b, index[b][ok].cpu()] = drop[b][ok.cpu()]
    return full


def greedy(model, x, drops, steps):
    new = []
    for _ in range(steps):
        logits = staged_forward(model, x, drops).logits[:, -1]
        logits[:, SUPPRESS] = float("-inf")
        tok = logits.argmax(-1, keepdim=True)
        new.append(tok)
        x = extend(x, tok, model.config.model_type)
        drops = {s: torch.cat([d, torch.zeros_like(tok, dtype=torch.bool)], 1) for s, d in drops.items()}
    return torch.cat(new, 1)


ROWS = {  # asymmetric rows, left padding, a text-only row
    "llava": [{"pre": 3, "post": 7, "image": True}, {"pre": 6, "post": 4, "image": True}, {"pre": 4, "post": 3}],
    "qwen2_vl": [{"pre": 3, "post": 6, "image": (16, 16)}, {"pre": 6, "post": 4, "image": (8, 24)}],
    "llava_next": [{"pre": 2, "post": 5, "image": (32, 64)}, {"pre": 5, "post": 3, "image": (64, 32)}],
    "qwen3_vl": [{"pre": 3, "post": 6, "image": (32, 32)}, {"pre": 6, "post": 4, "image": (32, 64)}],  # deepstack
}


def check(model, x, layers, counts):
    drops = reference_drops(model, x, layers, counts)
    vision = (x["input_ids"] == IMAGE_ID) | (x["input_ids"] == VIDEO_ID)
    assert all(bool(d.any()) for d in drops.values()) and bool((vision & ~sum(drops.values()).bool()).any())
    logits, tokens, seen, cache = run_policy(model, x, SparseVLM(layers=layers, counts=counts))
    n, shape = len(layers), x["input_ids"].shape
    for call in range(2):  # forward, generate's prefill: one select per stage
        for i, stage in enumerate(sorted(drops)):
            assert torch.equal(in_call(*seen[call * n + i], shape), drops[stage]), (call, stage)
    assert all(not bool(d.any()) for _, d in seen[2 * n:])  # decode steps: nothing leaves
    text = ~vision & x["attention_mask"].bool()
    ref = staged_forward(model, x, drops).logits
    assert torch.allclose(logits[text], ref[text], atol=1e-4)
    assert torch.equal(tokens, greedy(model, x, drops, tokens.shape[1]))
    steps = tokens.shape[1] - 1
    for layer in range(len(decoder_layers(model).layers)):  # each layer caches the tokens it saw
        gone = [d for stage, d in drops.items() if layer >= stage]
        kept = x["attention_mask"].bool() & ~torch.stack(gone).any(0) if gone else None
        want = shape[1] if kept is None else int(kept.sum(1).max())
        assert cache.layers[layer].keys.shape[-2] == want + steps, layer

@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(ROWS))
def test_one_stage_on_todays_engine_matches_the_authors_rule(family, impl):
    """layers=(1,): raters and layer 1's attention choose, tokens leave before layer 2 (runs on the one-stage
    engine: the policy reads Tokens.index/layer where they exist and the call's layout otherwise)."""
    model = tiny_model(family, attn_implementation=impl)
    x = tiny_inputs(model, ROWS[family])
    check(model, x, (1,), (6,))


@MULTI_STAGE
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(ROWS))
def test_three_stages_match_the_authors_rule_and_the_masked_reference(family, impl):
    model = tiny_model(family, attn_implementation=impl)
    x = tiny_inputs(model, ROWS[family])
    check(model, x, (1, 2, 4), (10, 6, 3))


@MULTI_STAGE
def test_a_wrong_second_stage_fails():
    """Scoring stage 2 with every vision token still present (not the kept ones) chooses other tokens, and
    its logits fail the comparison: the stages compose."""
    model = tiny_model("qwen2_vl", attn_implementation="eager")
    x = tiny_inputs(model, ROWS["qwen2_vl"])
    right = reference_drops(model, x, (1, 2), (20, 8))
    alone = reference_drops(model, x, (2,), (8,))
    wrong = {2: right[2], 3: alone[3] & ~right[2]}
    assert not torch.equal(wrong[3], right[3])
    logits, _, _, _ = run_policy(model, x, SparseVLM(layers=(1, 2), counts=(20, 8)), steps=1)
    text = ~(x["input_ids"] == IMAGE_ID) & x["attention_mask"].bool()
    assert torch.allclose(logits[text], staged_forward(model, x, right).logits[text], atol=1e-4)
    assert not torch.allclose(logits[text], staged_forward(model, x, wrong).logits[text], atol=1e-4)


def test_select_over_packed_stages_matches_the_authors_per_row():
    """The multi-stage interface without the engine: ``select`` on a padded batch, first on the call's tokens,
    then on the packed kept tokens (``Tokens.index``/``layer`` as the multi-stage engine will give them, -1
    for fill slots), against the authors' rule on each row's own compacted sequence."""
    from types import SimpleNamespace

    from vtwctl.engine.plan import pack

    g = torch.Generator().manual_seed(3)
    rows = [(2, 3, 15, 10), (0, 4, 12, 14)]  # padding, pre, vision, text
    q0, hidden, heads, kv_heads, d = 30, 16, 4, 2, 8
    vision = torch.zeros(2, q0, dtype=torch.bool)
    valid = torch.zeros(2, q0, dtype=torch.bool)
    for b, (pad, pre, nv, _) in enumerate(rows):
        valid[b, pad:] = True
        vision[b, pad + pre:pad + pre + nv] = True
    embeds = torch.randn(2, q0, hidden, generator=g)
    policy = SparseVLM(layers=(1, 3), counts=(8, 4))
    policy.embeds = embeds
    index = torch.arange(q0).expand(2, q0)
    gone = torch.zeros_like(vision)
    for stage, count in zip(policy.stages, policy.counts, strict=True):
        n = index.shape[1]
        q, k = torch.randn(2, heads, n, d, generator=g), torch.randn(2, kv_heads, n, d, generator=g)
        policy.seen[stage - 1] = (q, k, d ** -0.5, None)
        ok = index >= 0
        cur_vision = vision.gather(1, index.clamp(min=0)) & ok
        cur_valid = valid.gather(1, index.clamp(min=0)) & ok
        tokens = SimpleNamespace(vision=cur_vision, valid=cur_valid, hidden=torch.zeros(2, n, hidden), past=0,
                                 norm=None, index=torch.where(ok, index, -1), layer=stage)
        drop = policy.select(tokens)
        for b, (_, pre, nv, _) in enumerate(rows):
            real = valid[b].nonzero().squeeze(1)
            t_token_idx = authors_raters(embeds[b, real][None], pre, pre + nv)
            slots = (cur_valid[b]).nonzero().squeeze(1)  # the row's current tokens, in order
            cv = cur_vision[b, slots].nonzero().squeeze(1)
            attn = authors_attention(q[b][:, slots][None], k[b].repeat_interleave(2, 0)[:, slots][None])
            mask, _, _ = authors_topk(attn, int(cv[0]), len(cv), int(cv[-1]) + 1, t_token_idx, count)
            want = torch.zeros(n, dtype=torch.bool)
            want[slots[cv[~mask[0]]]] = True
            assert torch.equal(drop[b], want), (stage, b)
        full = torch.zeros_like(vision)
        for b in range(2):
            full[b, index[b][ok[b]]] = drop[b][ok[b]]
        gone |= full
        index = pack(valid & ~gone)  # the next stage's tokens: kept ones, right-aligned, -1 fill
    assert (vision & ~gone).sum(1).tolist() == [4, 4] and policy.embeds is None  # cleared after the last stage


def test_raters_when_every_candidate_rates_alike():
    """Equal text states give every candidate the same share: all of them rate (the authors' ``>`` finds none)."""
    from vtwctl.engine.policies.sparsevlm import rater_mask

    embeds = torch.zeros(8, 4)
    embeds[:5] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # vision (and prompt) states; the text states all zero
    vision = torch.tensor([False, True, True, True, False, False, False, False])
    text = torch.tensor([False] * 5 + [True] * 3)
    assert rater_mask(embeds, vision, text).tolist() == [False] * 5 + [True] * 3
    embeds[7] = embeds[1]  # one text token like the vision tokens: it alone is above the mean
    assert rater_mask(embeds, vision, text).tolist() == [False] * 7 + [True]

"""The withdrawal plan's pure functions against hand-written expectations."""

from __future__ import annotations

import torch

from vtwctl import plan

T, F = True, False


def test_pack_right_aligns_rows_with_different_vision_counts_and_no_padding():
    # row 0: tokens 1, 2 are vision; row 1: token 3 is vision (same length, no padding)
    keep = torch.tensor([[T, F, F, T, T], [T, T, T, F, T]])
    q_idx = plan.pack(keep)
    assert q_idx.tolist() == [[-1, 0, 3, 4], [0, 1, 2, 4]]
    # the last slot of every row is its last kept token (what generate reads)
    assert q_idx[:, -1].tolist() == [4, 4]


def test_pack_with_a_fixed_width_and_an_empty_row():
    keep = torch.tensor([[T, F], [F, F]])
    assert plan.pack(keep).tolist() == [[0], [-1]]
    assert plan.pack(keep, width=2).tolist() == [[-1, 0], [-1, -1]]
    assert plan.pack(torch.tensor([[T]]), width=3).tolist() == [[-1, -1, 0]]


def test_chunk_map_and_key_window_pad_a_static_cache_tail():
    q_idx = torch.tensor([[-1, 0, 3], [0, 1, 2]])
    chunk = plan.chunk_map(q_idx, past=10)
    assert chunk.tolist() == [[-1, 10, 13], [10, 11, 12]]
    kv_map = torch.cat([torch.tensor([[0, 1], [0, -1]]), chunk], 1)
    # a static cache of 8 slots: slots past the written 5 are free, hence -1
    assert plan.key_window(kv_map, 0, 8).tolist() == [[0, 1, -1, 10, 13, -1, -1, -1], [0, -1, 10, 11, 12, -1, -1, -1]]
    # a sliding layer that dropped its first 2 slots
    assert plan.key_window(kv_map, 2, 3).tolist() == [[-1, 10, 13], [10, 11, 12]]


def test_allowed_keys_is_causal_by_original_index_and_fill_queries_see_only_themselves():
    key_pos = torch.tensor([[-1, 0, 3, 4], [0, 1, 2, 4]])  # the packed rows above, no cache
    allowed = plan.allowed_keys(key_pos, key_pos, torch.arange(4))[:, 0]
    assert allowed[0].tolist() == [[T, F, F, F],  # fill slot: itself only
                                   [F, T, F, F],
                                   [F, T, T, F],
                                   [F, T, T, T]]
    assert allowed[1].tolist() == [[T, F, F, F], [T, T, F, F], [T, T, T, F], [T, T, T, T]]


def test_allowed_keys_with_a_window_and_a_decode_step():
    # decode: one query at original index 9; keys at original indices 0, 2, 5, 8, 9; window 5 -> 5..9
    key_pos = torch.tensor([[0, 2, 5, 8, 9]])
    allowed = plan.allowed_keys(key_pos, torch.tensor([[9]]), torch.tensor([4]), window=5)[0, 0]
    assert allowed.tolist() == [[F, F, T, T, T]]
    # the window counts original positions, not slots: index 4 is outside a window of 5 from 9
    allowed = plan.allowed_keys(torch.tensor([[4, 9]]), torch.tensor([[9]]), torch.tensor([1]), window=5)[0, 0]
    assert allowed.tolist() == [[F, T]]


def test_allowed_keys_in_a_prefix_block_are_bidirectional():
    pos = torch.tensor([[0, 1, 2, 3]])
    block = torch.tensor([[0, 0, 0, -1]])  # a prefix of three tokens, then a suffix token
    allowed = plan.allowed_keys(pos, pos, torch.arange(4), key_block=block, query_block=block)[0, 0]
    assert allowed.tolist() == [[T, T, T, F], [T, T, T, F], [T, T, T, F], [T, T, T, T]]


def test_rearrange_shift_closes_runs_also_across_calls():
    # call 1: positions 0..5, tokens 2, 3 withdrawn in the middle and token 5 ends the call withdrawn
    pos = torch.tensor([[0, 1, 2, 3, 4, 5]])
    wd = torch.tensor([[F, F, T, T, F, T]])
    shift, offset, pending = plan.rearrange_shift(pos, wd, None, None)
    # token 4 takes the position of the run's first token (2): shift 2; the run ending the call is pending
    assert shift[0, [0, 1, 4]].tolist() == [0, 0, 2]
    assert offset.tolist() == [2] and pending.tolist() == [5]
    # call 2 (decoding): token 6 follows the withdrawn token 5, so it moves down by 1 more
    shift, offset, pending = plan.rearrange_shift(torch.tensor([[6]]), torch.tensor([[F]]), offset, pending)
    assert shift.tolist() == [[3]] and pending.tolist() == [-1]
    # the renumbered text positions are contiguous: 0, 1, 2 (was 4), 3 (was 6)
    assert [p - s for p, s in zip([0, 1, 4, 6], [0, 0, 2, 3])] == [0, 1, 2, 3]


def test_gather_seq_broadcasts_a_batch_of_one():
    cos = torch.arange(6.0).view(1, 3, 2)  # [1, S, D]
    idx = torch.tensor([[2, 0], [-1, 1]])
    out = plan.gather_seq(cos, idx, -2, -3)
    assert out.tolist() == [[[4.0, 5.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 3.0]]]

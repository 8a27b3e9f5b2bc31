"""Paged attention for the torch path (CPU): few fused `scaled_dot_product_attention` calls per layer.

Same arguments and result as `paged_attention_ref`, which stays the plain definition. Requests are
grouped so each group is one 4-D SDPA call (the shape torch's fused CPU kernel takes):

* decodes (one new query each) all go together; their contexts are gathered to the longest one and
  the rest masked, so a step of decodes costs one call per layer whatever their lengths;
* prefill chunks with the same (new tokens, context length) go together, with `is_causal` when the
  chunk is the whole context and a bottom-right causal mask when it follows a cached prefix. A long
  chunk's queries are cut into up to `MAX_PIECES` pieces, each attending only the keys up to its last
  query: torch's CPU kernel skips no work below a key block of 512, so a 350-token prompt in one call
  computes its whole 350 x 350 score square; in six pieces it computes under 60% of it.

A group whose context is all this step's tokens (no cached prefix) reads the step's own K/V, `k` and `v`
when given, as a view of the flat batch; the others gather their K/V from the paged cache once per call.
GQA: prefill passes `enable_gqa`; decode folds each kv head's query heads into its query rows (one query
per request needs no causal mask), which torch's CPU kernel runs several times faster in bfloat16 than
`enable_gqa` with one query row.

Requests flagged in `fixed` (batch-invariant mode, `inference.kernels.invariant`) leave the groups: their rows
run on query tiles aligned to absolute positions (`attend_tiles`), shapes that depend on a row's position
only, so its result does not change with the batch or the chunking.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inference.kernels.invariant import attend_tiles

PIECE_ROWS, MAX_PIECES = 64, 6    # a prefill chunk of n queries runs as min(ceil(n / 64), 6) pieces


def paged_attention_sdpa(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_tables: torch.Tensor, seq_lens: list[int],
                         query_start_loc: list[int], scale: float,
                         k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                         fixed: list[bool] | None = None) -> torch.Tensor:
    """q: [T, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D] -> [T, Hq, D].

    k, v: [T, Hkv, D], the step's own keys and values (already written to the cache), or None.
    fixed: per request, whether it runs on batch-invariant fixed shapes (None: none does).
    """
    out = torch.empty_like(q)
    pinned = [b for b, flag in enumerate(fixed or ()) if flag]
    if pinned:
        gathered = [(q[query_start_loc[b]:query_start_loc[b + 1]],
                     *(_gather(c, block_tables, [b], seq_lens[b])[0] for c in (k_cache, v_cache))) for b in pinned]
        for b, o in zip(pinned, attend_tiles(gathered, scale)):
            out[query_start_loc[b]:query_start_loc[b + 1]] = o
    for members, n, ctx in _groups(seq_lens, query_start_loc, fixed):
        rows = _rows([query_start_loc[b] for b in members], n, q.device)
        if n == ctx and k is not None:   # no cached prefix: this step's K/V are the whole context
            keys, values = (_step_view(t, rows, len(members), n) for t in (k, v))
        else:
            keys, values = (_gather(c, block_tables, members, ctx) for c in (k_cache, v_cache))
        if n == 1:   # each kv head's query heads become its query rows: no causality to keep, no GQA expansion
            queries = q[rows].unflatten(1, (keys.shape[1], -1))                            # [G, Hkv, Hq/Hkv, D]
            mask = _decode_mask(seq_lens, members, ctx, q.device)
            o = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
            out[rows] = o.flatten(1, 2)
        else:
            queries = q[rows].unflatten(0, (len(members), n)).transpose(1, 2)               # [G, Hq, n, D]
            o = torch.empty_like(queries)
            pieces = min(-(-n // PIECE_ROWS), MAX_PIECES)
            bounds = [n * i // pieces for i in range(pieces + 1)]
            for start, stop in zip(bounds, bounds[1:]):   # queries [start, stop) see keys up to ctx - n + stop
                seen = ctx - n + stop
                mask, causal = _causal_mask(stop - start, seen, q.device)
                o[:, :, start:stop] = F.scaled_dot_product_attention(
                    queries[:, :, start:stop], keys[:, :, :seen], values[:, :, :seen], attn_mask=mask,
                    is_causal=causal, scale=scale, enable_gqa=keys.shape[1] != q.shape[1])
            out[rows] = o.transpose(1, 2).flatten(0, 1)
    return out


def _groups(seq_lens: list[int], query_start_loc: list[int],
            fixed: list[bool] | None = None) -> list[tuple[list[int], int, int]]:
    """(request indices, new tokens each, context length to gather) per SDPA call; `fixed` requests left out."""
    decodes: list[int] = []
    prefills: dict[tuple[int, int], list[int]] = {}
    for b, seq_len in enumerate(seq_lens):
        n = query_start_loc[b + 1] - query_start_loc[b]
        if fixed and fixed[b]:
            continue
        if n == 1:
            decodes.append(b)
        elif n > 1:
            prefills.setdefault((n, seq_len), []).append(b)
    groups = [(members, n, ctx) for (n, ctx), members in prefills.items()]
    if decodes:
        groups.append((decodes, 1, max(seq_lens[b] for b in decodes)))
    return groups


def _rows(starts: list[int], n: int, device: torch.device) -> torch.Tensor | slice:
    """The flat-batch rows of the group's queries: a slice when they are back to back."""
    if all(s == starts[0] + i * n for i, s in enumerate(starts)):
        return slice(starts[0], starts[0] + len(starts) * n)
    return (torch.tensor(starts, device=device)[:, None] + torch.arange(n, device=device)).flatten()


def _step_view(t: torch.Tensor, rows: torch.Tensor | slice, num: int, n: int) -> torch.Tensor:
    """[G, Hkv, n, D]: the group's rows of a flat [T, Hkv, D] tensor (a view when the rows are a slice)."""
    return t[rows].unflatten(0, (num, n)).transpose(1, 2)


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, members: list[int], ctx: int) -> torch.Tensor:
    """[G, Hkv, ctx, D]: the first `ctx` cached positions of each member (past a request's end: padding)."""
    block_size = cache.shape[1]
    width = -(-ctx // block_size)
    index = torch.tensor(members, device=block_tables.device)
    blocks = block_tables[index, :width]                                           # [G, nb]
    return cache[blocks].flatten(1, 2)[:, :ctx].transpose(1, 2)


def _decode_mask(seq_lens: list[int], members: list[int], ctx: int, device: torch.device) -> torch.Tensor | None:
    """SDPA's attn_mask for a decode group: keys past each request's length."""
    lens = [seq_lens[b] for b in members]
    if min(lens) == ctx:
        return None
    valid = torch.arange(ctx, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
    return valid[:, None, None, :]                                                 # [G, 1, 1, ctx]


def _causal_mask(n: int, ctx: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA: n queries that are the last n of a context of ctx (bottom-right causal)."""
    if n == ctx:
        return None, True
    rows = torch.arange(n, device=device)[:, None] + (ctx - n)
    return torch.arange(ctx, device=device)[None, :] <= rows, False                # [n, ctx]

"""The post-processing algorithms: query expansion, database-side augmentation, k-reciprocal
re-ranking, gallery-side assignment reasoning, and per-side centring.

Each operates on L2-normalised float32 embeddings (or a similarity matrix) with vectorised numpy
and faiss, never Python loops over pairs. toolkit.retrieval.recipes names them, chains them into
recipes and chooses among them on validation (each can also hurt).

- alpha_query_expansion (alpha-QE, Radenovic et al.): q' = normalise(q + sum_{j<n} s_j^alpha g_j)
  over the query's top-n gallery neighbours, s_j clipped at 0.
- database_augmentation (DBA): each gallery vector replaced by the same weighted mean over its own
  top-n gallery neighbours (itself excluded from the n, included with weight 1).
- k_reciprocal_distance (Zhong et al., CVPR 2017, "Re-ranking person re-identification with
  k-reciprocal encoding"), over the union of queries and gallery, with d(i, j) = |x_i - x_j|^2:
    N(i, k)   the k+1 nearest (i itself included, as in the authors' code);
    R(i, k)   = {j in N(i, k) : i in N(j, k)}                          (k-reciprocal set);
    R*(i)     = R(i, k1) united with every R(c, round(k1/2)), c in R(i, k1), that shares more
                than 2/3 of its members with R(i, k1);
    V[i, j]   = exp(-d(i, j)) / sum over R*(i), for j in R*(i), else 0;
    V'[i]     = mean of V[j] over j in N(i, k2 - 1) (local query expansion; k2=1 leaves V);
    d_J(i, j) = 1 - sum_l min(V'[i,l], V'[j,l]) / sum_l max(V'[i,l], V'[j,l]);
    d*(i, j)  = (1 - lambda) d_J(i, j) + lambda d(i, j).
  Sparse throughout: V holds about |R*| entries a row and d_J is a join on shared columns, so
  memory grows with N times the neighbourhood sizes, not N^2 per query.
- dual_softmax: "each gallery image shows one person": a gallery image that is the best match of
  many queries is discounted (softmax over the gallery for each query times softmax over the
  queries for each gallery image, at a temperature).
- sinkhorn: a balanced assignment: exp(similarity / temperature) scaled by Sinkhorn iterations
  until every query row and every gallery column carries the same mass; each query then ranks
  the gallery by its row of the plan.
- centre_sides: the query side and the gallery side each centred on its own mean and
  re-normalised (photos and renderings sit in different regions of the embedding space).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.retrieval.encoder import l2_normalise
from toolkit.retrieval.search import top_k


def alpha_query_expansion(query: np.ndarray, gallery: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    n = min(n, len(gallery))
    if n <= 0:
        return l2_normalise(query)
    similarities, indices = top_k(query, gallery, n)
    weights = np.clip(similarities, 0, None) ** alpha
    return l2_normalise(query + np.einsum("qn,qnd->qd", weights, gallery[indices]))


def database_augmentation(gallery: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    n = min(n, len(gallery) - 1)
    if n <= 0:
        return l2_normalise(gallery)
    similarities, indices = top_k(gallery, gallery, n + 1)
    own = indices == np.arange(len(gallery))[:, None]
    # drop the row's own entry (wherever ties put it); keep the n best others
    order = np.argsort(own, axis=1, kind="stable")[:, :n]
    others, weights = np.take_along_axis(indices, order, 1), np.take_along_axis(similarities, order, 1)
    weights = np.clip(weights, 0, None) ** alpha
    return l2_normalise(gallery + np.einsum("gn,gnd->gd", weights, gallery[others]))


def dual_softmax(similarity: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """Similarity (queries x gallery) re-weighted by both softmaxes; higher is better."""
    logits = np.asarray(similarity, dtype=np.float64) / temperature
    if 0 in logits.shape:                   # no queries or no gallery: nothing to re-weight
        return logits.astype(np.float32)
    over_gallery = np.exp(logits - logits.max(axis=1, keepdims=True))
    over_gallery /= over_gallery.sum(axis=1, keepdims=True)
    over_queries = np.exp(logits - logits.max(axis=0, keepdims=True))
    over_queries /= over_queries.sum(axis=0, keepdims=True)
    return (over_gallery * over_queries).astype(np.float32)


def sinkhorn(similarity: np.ndarray, temperature: float = 0.05, iterations: int = 30) -> np.ndarray:
    """Log of the balanced transport plan of exp(similarity / temperature) (queries x gallery):
    rows and columns scaled in the log domain until each query row sums to 1/queries and each
    gallery column to 1/gallery. Higher is better; each row ranks as similarity/T + log v_j."""
    logits = np.asarray(similarity, dtype=np.float64) / temperature
    rows, columns = logits.shape
    if rows == 0 or columns == 0:
        return logits.astype(np.float32)
    log_u, log_v = np.zeros(rows), np.zeros(columns)
    for _ in range(iterations):
        log_u = -np.log(rows) - _logsumexp(logits + log_v[None, :], axis=1)
        log_v = -np.log(columns) - _logsumexp(logits + log_u[:, None], axis=0)
    return (logits + log_u[:, None] + log_v[None, :]).astype(np.float32)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def centre_sides(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each side minus its own mean, re-normalised (an empty side stays as it is)."""
    def centred(side: np.ndarray) -> np.ndarray:
        return l2_normalise(side - side.mean(axis=0, keepdims=True)) if len(side) else side
    return centred(query), centred(gallery)


# ---------------------------------------------------------------- k-reciprocal


def _expanded_sets(neighbours: np.ndarray, half: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R*(i) for the given rows: (indices, valid) arrays, duplicates marked invalid."""
    base, base_ok = neighbours[rows], _reciprocal_mask_rows(neighbours, rows)
    candidate_sets = half[base]                                   # (r, K1, Kh)
    candidate_ok = _reciprocal_mask_rows(half, base.reshape(-1)).reshape(candidate_sets.shape)
    in_base = ((candidate_sets[..., None] == base[:, None, None, :]) & base_ok[:, None, None, :]).any(-1)
    overlap = (in_base & candidate_ok).sum(-1)
    accepted = base_ok & (overlap > (2.0 / 3.0) * candidate_ok.sum(-1))
    extra_ok = candidate_ok & accepted[..., None]
    indices = np.concatenate([base, candidate_sets.reshape(len(rows), -1)], axis=1)
    valid = np.concatenate([base_ok, extra_ok.reshape(len(rows), -1)], axis=1)
    # one entry per member: sort with invalid entries pushed to the end, then drop repeats
    sentinel = np.iinfo(indices.dtype).max
    keyed = np.where(valid, indices, sentinel)
    keyed.sort(axis=1)
    repeated = np.zeros_like(valid)
    repeated[:, 1:] = keyed[:, 1:] == keyed[:, :-1]
    valid = (keyed != sentinel) & ~repeated
    return np.where(valid, keyed, 0), valid


def _reciprocal_mask_rows(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """mask[r, a]: rows[r] is among the neighbours of its own a-th neighbour."""
    return (neighbours[neighbours[rows]] == rows[:, None, None]).any(axis=2)


@dataclass
class _SparseRows:
    """Rows of a sparse non-negative matrix in CSR form."""
    indptr: np.ndarray
    columns: np.ndarray
    values: np.ndarray

    @classmethod
    def from_coo(cls, rows: np.ndarray, columns: np.ndarray, values: np.ndarray, n_rows: int) -> "_SparseRows":
        order = np.lexsort((columns, rows))
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]), columns[order], values[order])

    def gather(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in row_ids, column, value) of every entry of the listed rows."""
        starts, counts = self.indptr[row_ids], self.indptr[row_ids + 1] - self.indptr[row_ids]
        owner = np.repeat(np.arange(len(row_ids)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        entries = np.repeat(starts, counts) + offset
        return owner, self.columns[entries], self.values[entries]


def k_reciprocal_distance(query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, chunk: int = 512) -> np.ndarray:
    """d* (queries x gallery, float32; lower is better), as defined in the module docstring."""
    features = np.ascontiguousarray(np.concatenate([query, gallery]), dtype=np.float32)
    total, query_count = len(features), len(query)
    k1 = max(1, min(k1, total - 1))
    k2 = max(1, min(k2, total))
    half_k = max(1, int(round(k1 / 2)))
    _, neighbours = top_k(features, features, k1 + 1)
    neighbours = neighbours.astype(np.int64)
    half = np.ascontiguousarray(neighbours[:, :half_k + 1])

    # V: exp(-d) over R*(i), rows normalised
    rows_list, columns_list, values_list = [], [], []
    for start in range(0, total, chunk):
        rows = np.arange(start, min(start + chunk, total))
        members, valid = _expanded_sets(neighbours, half, rows)
        distances = 2.0 - 2.0 * np.einsum("rd,rmd->rm", features[rows], features[members])
        weights = np.where(valid, np.exp(-np.maximum(distances, 0.0)), 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        row_ids = np.broadcast_to(rows[:, None], members.shape)
        rows_list.append(row_ids[valid]); columns_list.append(members[valid]); values_list.append(weights[valid])
    V = _SparseRows.from_coo(np.concatenate(rows_list), np.concatenate(columns_list),
                             np.concatenate(values_list), total)

    # V': mean of V over the k2 nearest rows (local query expansion)
    if k2 > 1:
        expansion = neighbours[:, :k2]
        owner, columns, values = V.gather(expansion.reshape(-1))
        target_rows = owner // k2
        keys = target_rows * total + columns
        unique_keys, inverse = np.unique(keys, return_inverse=True)
        summed = np.bincount(inverse, weights=values) / k2
        V = _SparseRows.from_coo(unique_keys // total, unique_keys % total, summed, total)

    # Jaccard distance between query rows and gallery rows, as a join on shared columns
    row_sums = np.bincount(np.repeat(np.arange(total), np.diff(V.indptr)), weights=V.values, minlength=total)
    gallery_ids = np.arange(query_count, total)
    g_owner, g_columns, g_values = V.gather(gallery_ids)
    by_column = np.argsort(g_columns, kind="stable")
    g_owner, g_columns, g_values = g_owner[by_column], g_columns[by_column], g_values[by_column]
    column_start = np.searchsorted(g_columns, np.arange(total))
    column_count = np.bincount(g_columns, minlength=total)
    gallery_count = total - query_count

    result = np.empty((query_count, gallery_count), dtype=np.float32)
    for start in range(0, query_count, max(1, chunk // 4)):
        rows = np.arange(start, min(start + max(1, chunk // 4), query_count))
        q_owner, q_columns, q_values = V.gather(rows)
        repeats = column_count[q_columns]
        pair_query = np.repeat(np.arange(len(q_owner)), repeats)
        offsets = np.arange(repeats.sum()) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        pair_gallery = column_start[q_columns][pair_query] + offsets
        minimum = np.minimum(q_values[pair_query], g_values[pair_gallery])
        flat = q_owner[pair_query] * gallery_count + g_owner[pair_gallery]
        shared = np.bincount(flat, weights=minimum, minlength=len(rows) * gallery_count).reshape(len(rows), gallery_count)
        union = row_sums[rows][:, None] + row_sums[query_count:][None, :] - shared
        jaccard = 1.0 - shared / np.maximum(union, 1e-12)
        original = np.maximum(2.0 - 2.0 * features[rows] @ features[query_count:].T, 0.0)
        result[start:start + len(rows)] = (1 - lambda_value) * jaccard + lambda_value * original
    return result

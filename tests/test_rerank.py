"""Each re-ranker against a brute-force reference written from its definition."""
import numpy as np
import pytest

from strategies.base import l2_normalise
from toolkit.retrieval.recipes import PLAIN, candidate_recipes, choose_post_processing, ranked_indices
from toolkit.retrieval.rerank import alpha_query_expansion, database_augmentation, dual_softmax, k_reciprocal_distance


def random_unit(rng, rows, width=16):
    return l2_normalise(rng.normal(size=(rows, width)))


def brute_alpha_qe(query, gallery, n, alpha):
    out = []
    for q in query:
        similarities = gallery @ q
        best = np.argsort(-similarities)[:n]
        out.append(q + sum(max(similarities[j], 0) ** alpha * gallery[j] for j in best))
    return l2_normalise(np.array(out))


def brute_dba(gallery, n, alpha):
    out = []
    for i, g in enumerate(gallery):
        similarities = gallery @ g
        others = [j for j in np.argsort(-similarities) if j != i][:n]
        out.append(g + sum(max(similarities[j], 0) ** alpha * gallery[j] for j in others))
    return l2_normalise(np.array(out))


def brute_k_reciprocal(query, gallery, k1, k2, lambda_value):
    features = np.concatenate([query, gallery]).astype(np.float64)
    total = len(features)
    distance = ((features[:, None] - features[None]) ** 2).sum(-1)
    order = np.argsort(distance, axis=1, kind="stable")

    def nearest(i, k):
        return list(order[i, :k + 1])

    def reciprocal(i, k):
        return [j for j in nearest(i, k) if i in nearest(j, k)]

    V = np.zeros((total, total))
    for i in range(total):
        base = reciprocal(i, k1)
        members = set(base)
        for candidate in base:
            candidate_set = reciprocal(candidate, int(round(k1 / 2)))
            if len(set(candidate_set) & set(base)) > 2 / 3 * len(candidate_set):
                members |= set(candidate_set)
        members = sorted(members)
        V[i, members] = np.exp(-distance[i, members])
        V[i] /= V[i].sum()
    if k2 > 1:
        V = np.array([V[order[i, :k2]].mean(axis=0) for i in range(total)])
    result = np.zeros((len(query), len(gallery)))
    for i in range(len(query)):
        for j in range(len(gallery)):
            a, b = V[i], V[len(query) + j]
            jaccard = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            result[i, j] = (1 - lambda_value) * jaccard + lambda_value * distance[i, len(query) + j]
    return result


def brute_dual_softmax(similarity, temperature):
    out = np.zeros_like(similarity, dtype=np.float64)
    for i in range(similarity.shape[0]):
        for j in range(similarity.shape[1]):
            row = np.exp(similarity[i] / temperature)
            column = np.exp(similarity[:, j] / temperature)
            out[i, j] = row[j] / row.sum() * column[i] / column.sum()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_alpha_qe_and_dba_equal_their_references(seed):
    rng = np.random.default_rng(seed)
    query, gallery = random_unit(rng, 7), random_unit(rng, 25)
    for n, alpha in ((1, 1.0), (3, 3.0)):
        np.testing.assert_allclose(alpha_query_expansion(query, gallery, n, alpha), brute_alpha_qe(query, gallery, n, alpha), atol=1e-5)
        np.testing.assert_allclose(database_augmentation(gallery, n, alpha), brute_dba(gallery, n, alpha), atol=1e-5)


@pytest.mark.parametrize("seed, k1, k2, lambda_value", [(0, 6, 3, 0.3), (1, 10, 1, 0.0), (2, 4, 4, 0.5), (3, 20, 6, 0.3)])
def test_k_reciprocal_equals_its_reference(seed, k1, k2, lambda_value):
    rng = np.random.default_rng(seed)
    # clustered points, so that reciprocal sets and their expansions are non-trivial
    centres = random_unit(rng, 5)
    query = l2_normalise(centres[rng.integers(0, 5, 9)] + 0.4 * rng.normal(size=(9, 16)))
    gallery = l2_normalise(centres[rng.integers(0, 5, 23)] + 0.4 * rng.normal(size=(23, 16)))
    fast = k_reciprocal_distance(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, chunk=8)
    np.testing.assert_allclose(fast, brute_k_reciprocal(query, gallery, k1, k2, lambda_value), atol=1e-4)


def test_dual_softmax_equals_its_reference():
    rng = np.random.default_rng(0)
    similarity = rng.uniform(-1, 1, size=(6, 9))
    np.testing.assert_allclose(dual_softmax(similarity, 0.1), brute_dual_softmax(similarity, 0.1), rtol=1e-4)


def clustered_perfect_case(rng, people=6, per_person=3):
    centres = random_unit(rng, people, width=64)
    query = l2_normalise(centres + 0.01 * rng.normal(size=centres.shape))
    labels = np.repeat(np.arange(people), per_person)
    gallery = l2_normalise(centres[labels] + 0.01 * rng.normal(size=(len(labels), 64)))
    return query, gallery, list(range(people)), labels.tolist()


def test_every_recipe_keeps_a_perfect_ranking_perfect():
    query, gallery, query_labels, gallery_labels = clustered_perfect_case(np.random.default_rng(0))
    choice = choose_post_processing(query, gallery, query_labels, gallery_labels)
    for candidate, score in choice.scores:
        assert score.top1 == 1.0 and score.map_at_10 == pytest.approx(1.0), candidate.describe()


def test_k_larger_than_the_gallery_ties_and_shapes():
    rng = np.random.default_rng(1)
    query, gallery = random_unit(rng, 4), random_unit(rng, 3)
    gallery = np.concatenate([gallery, gallery[:1]])          # an exact duplicate: ties
    for candidate in candidate_recipes():
        indices = ranked_indices(candidate, query, gallery, k=10)
        assert indices.shape == (4, 4), candidate.describe()
        assert all(len(set(row)) == 4 for row in indices.tolist()), candidate.describe()
    assert k_reciprocal_distance(query, gallery, k1=50, k2=50).shape == (4, 4)
    assert alpha_query_expansion(query, gallery[:0].reshape(0, 16), n=3).shape == (4, 16)


def test_choice_keeps_none_unless_something_wins_on_validation():
    rng = np.random.default_rng(2)
    query, gallery = random_unit(rng, 10), random_unit(rng, 30)
    labels = rng.integers(0, 10, 30).tolist()
    choice = choose_post_processing(query, gallery, list(range(10)), labels, recipes=[PLAIN])
    assert choice.best == PLAIN and choice.best_score is choice.baseline

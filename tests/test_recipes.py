"""Post-processing recipes: the registry, chaining, storage as {name, params}, and the new steps
(per-side centring, Sinkhorn) against references written from their definitions."""
import json

import numpy as np
import pytest

from strategies.base import l2_normalise
from toolkit.retrieval.recipes import PLAIN, Recipe, candidate_recipes, ranked_indices, recipe, step
from toolkit.retrieval.rerank import centre_sides, dual_softmax, k_reciprocal_distance, sinkhorn


def random_unit(rng, rows, width=16):
    return l2_normalise(rng.normal(size=(rows, width)))


def test_every_grid_recipe_survives_its_record_and_its_json():
    for candidate in candidate_recipes():
        assert Recipe.from_record(candidate.to_record()) == candidate
        assert Recipe.from_record(json.dumps(candidate.to_record())) == candidate


def test_display_text_of_older_rows_is_read_by_name():
    assert Recipe.from_record("none") == PLAIN and Recipe.from_record(None) == PLAIN
    assert Recipe.from_record("dual-softmax(temperature=0.1)") == recipe(step("dual-softmax", temperature=0.1))
    assert Recipe.from_record("dba+alpha-qe(alpha=3.0, n=1)") == recipe(step("dba", n=1, alpha=3.0),
                                                                         step("alpha-qe", n=1, alpha=3.0))
    assert Recipe.from_record("k-reciprocal(k1=10, k2=3, lambda_value=0.3)").steps[0].params == \
        (("k1", 10), ("k2", 3), ("lambda_value", 0.3))


def test_a_recipe_outside_the_grid_is_stored_and_replayed():
    chained = recipe(step("centre"), step("alpha-qe", n=2, alpha=3.0), step("k-reciprocal", k1=7, k2=2, lambda_value=0.5),
                     step("sinkhorn", temperature=0.07))
    assert chained not in candidate_recipes()
    again = Recipe.from_record(json.dumps(chained.to_record()))
    rng = np.random.default_rng(0)
    query, gallery = random_unit(rng, 6), random_unit(rng, 9)
    assert np.array_equal(ranked_indices(again, query, gallery, 5), ranked_indices(chained, query, gallery, 5))


def test_steps_are_checked():
    with pytest.raises(ValueError, match="unknown post-processing step"):
        step("whiten-all")
    with pytest.raises(ValueError, match="before scorers"):
        recipe(step("dual-softmax", temperature=0.1), step("centre"))
    with pytest.raises(ValueError, match="first scorer"):
        recipe(step("sinkhorn", temperature=0.1), step("k-reciprocal", k1=5, k2=2, lambda_value=0.3))


def test_centring_each_side_on_its_own_mean():
    rng = np.random.default_rng(1)
    query = random_unit(rng, 5) + 3.0            # the two sides sit far apart
    gallery = random_unit(rng, 7) - 2.0
    centred_query, centred_gallery = centre_sides(l2_normalise(query), l2_normalise(gallery))
    expected = l2_normalise(l2_normalise(query) - l2_normalise(query).mean(0))
    np.testing.assert_allclose(centred_query, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(centred_gallery, axis=1), 1.0, atol=1e-5)
    ranked = ranked_indices(recipe(step("centre")), l2_normalise(query), l2_normalise(gallery), 7)
    reference = np.argsort(-(centred_query @ centred_gallery.T), axis=1, kind="stable")
    np.testing.assert_array_equal(ranked, reference)


def brute_sinkhorn(similarity, temperature, iterations):
    plan = np.exp(similarity.astype(np.float64) / temperature)
    rows, columns = plan.shape
    for _ in range(iterations):
        plan *= (1 / rows) / plan.sum(axis=1, keepdims=True)
        plan *= (1 / columns) / plan.sum(axis=0, keepdims=True)
    return plan


def test_sinkhorn_is_the_balanced_plan_of_its_definition():
    rng = np.random.default_rng(2)
    similarity = random_unit(rng, 6) @ random_unit(rng, 11).T
    plan = np.exp(sinkhorn(similarity, temperature=0.2, iterations=200).astype(np.float64))
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 6, rtol=1e-4)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 11, rtol=1e-4)
    np.testing.assert_allclose(plan, brute_sinkhorn(similarity, 0.2, 200), rtol=1e-4)


def test_sinkhorn_spreads_queries_over_a_gallery_image_that_attracts_all_of_them():
    # every query's nearest is gallery 0 (a "hub"); each query's own match is a close second
    queries = 4
    similarity = np.full((queries, queries + 1), 0.1)
    similarity[:, 0] = 0.9
    similarity[np.arange(queries), np.arange(1, queries + 1)] = 0.85
    plain = np.argmax(similarity, axis=1)
    balanced = np.argmax(sinkhorn(similarity, temperature=0.05, iterations=100), axis=1)
    assert (plain == 0).all()
    assert sorted(balanced.tolist()).count(0) <= 1 and len(set(balanced.tolist())) >= queries - 1


def test_scorers_chain_on_the_scores_before_them():
    rng = np.random.default_rng(3)
    query, gallery = random_unit(rng, 5), random_unit(rng, 8)
    chained = ranked_indices(recipe(step("k-reciprocal", k1=4, k2=2, lambda_value=0.3),
                                    step("dual-softmax", temperature=0.1)), query, gallery, 8)
    scores = dual_softmax(-k_reciprocal_distance(query, gallery, k1=4, k2=2, lambda_value=0.3), 0.1)
    np.testing.assert_array_equal(chained, np.argsort(-scores, axis=1, kind="stable"))


def test_every_recipe_ranks_a_fold_with_no_queries():
    """A tiny competition can leave a validation fold without queries: every recipe then ranks
    nothing, it does not raise (dual-softmax's reductions over an empty axis did)."""
    from toolkit.retrieval.recipes import candidate_recipes, ranked_indices

    gallery = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    for candidate in candidate_recipes():
        assert ranked_indices(candidate, np.zeros((0, 8), np.float32), gallery, 10).shape[0] == 0, candidate

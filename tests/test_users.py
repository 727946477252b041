"""User models, choice models, candidate generation and the user model registry."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the ids)
from recsim_mm import ItemSpace
from recsim_mm.candidates import CandidateConfig, CandidateGenerator
from recsim_mm.choice import Cascade, MultinomialLogit, make_choice_model
from recsim_mm.users import (
    InterestEvolutionUser,
    MultimodalUser,
    MyopicUser,
    SatiationUser,
    UserModel,
    register_user_model,
    registered_user_models,
    resolve_user_model,
)
from recsim_mm.users.multimodal import sample_beta

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def space() -> ItemSpace:
    # Clustered random space: the user-model mechanics do not need encoded content.
    return ItemSpace.random(200, d_text=16, d_image=16, num_topics=8, seed=3)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fresh(cls, space, b=64, seed=0, **params):
    users = cls(space, b, **params)
    users.sample(torch.arange(b), _gen(seed))
    return users


def test_sampled_users_have_unit_interests_beta_modality_weights_and_budgets(space):
    users = _fresh(MultimodalUser, space, b=4000, modality_beta=(2.0, 6.0))
    dt = space.d_text
    assert torch.allclose(users.interest[:, :dt].norm(dim=1), torch.ones(4000), atol=1e-5)
    assert torch.allclose(users.interest[:, dt:].norm(dim=1), torch.ones(4000), atol=1e-5)
    a = users.modality_weight
    assert ((a > 0) & (a < 1)).all()
    # Beta(2, 6): mean 0.25, variance 2*6 / (8^2 * 9) = 0.0208; 4000 draws -> SE 0.0023.
    assert abs(a.mean().item() - 0.25) < 0.012
    assert abs(a.var().item() - 0.0208) < 0.003
    cfg = users.config
    assert (users.budget >= cfg.time_budget * (1 - cfg.time_budget_spread) - 1e-4).all()
    assert (users.budget <= users.max_time_left() + 1e-4).all()


def test_beta_sampler_matches_moments_for_small_concentrations():
    x = sample_beta(0.5, 0.5, 20000, _gen(1), torch.device("cpu"))
    assert abs(x.mean().item() - 0.5) < 0.01
    assert abs(x.var().item() - 0.125) < 0.005  # ab / ((a+b)^2 (a+b+1)) = 0.25 / 2


def test_interests_sit_at_the_favourite_topics_mean_embeddings(space):
    users = _fresh(MultimodalUser, space, b=50, favourite_topics=1, interest_noise=0.0)
    centres_text, centres_image = MultimodalUser._topic_centres(space)
    dt = space.d_text
    cos_text = users.interest[:, :dt] @ centres_text.T
    best = cos_text.argmax(1)
    # With one favourite topic and no noise, the text interest IS that topic's mean
    # text embedding, and the image interest is the same topic's mean image embedding.
    assert torch.allclose(cos_text.max(1).values, torch.ones(50), atol=1e-5)
    cos_image = (users.interest[:, dt:] * centres_image[best]).sum(1)
    assert torch.allclose(cos_image, torch.ones(50), atol=1e-5)


def test_affinity_is_the_modality_weighted_sum_of_the_two_cosines(space):
    users = _fresh(MultimodalUser, space, b=8)
    items = torch.randint(space.num_items, (8, 5), generator=_gen(2))
    a = users.modality_weight.unsqueeze(1)
    dt = space.d_text
    cos_text = torch.einsum("bkd,bd->bk", space.text[items], users.interest[:, :dt])
    cos_image = torch.einsum("bkd,bd->bk", space.image[items], users.interest[:, dt:])
    expected = a * cos_text + (1 - a) * cos_image
    assert torch.allclose(users.affinity(items), expected, atol=1e-5)
    rows = torch.tensor([5, 1])
    assert torch.allclose(users.affinity(items[rows], rows), expected[rows], atol=1e-5)


def _consume(users, item_rows):
    """Step every user with a one-item slate; returns the response."""
    slate = item_rows.view(-1, 1)
    response = users.respond(slate, _gen(7))
    users.transition(slate, response, _gen(8))
    return response


def test_satiation_builds_with_similar_consumption_and_decays_without(space):
    # no_click_utility -10: the user always clicks, so consumption is certain.
    users = _fresh(SatiationUser, space, b=1, no_click_utility=-10.0, patience=100)
    # The user's favourite item (so they watch most of it), a similar item of the same
    # topic, and the best-liked item of another topic.
    liked = users.affinity(torch.arange(space.num_items).unsqueeze(0))[0]
    topic = space.topics.argmax(1)
    item = liked.argmax().view(1)
    same = (topic == topic[item]) & (torch.arange(space.num_items) != item)
    same_topic = torch.where(same, liked, -9).argmax().view(1)
    other_topic = torch.where(topic != topic[item], liked, -9).argmax().view(1)
    probe = torch.stack([item, same_topic, other_topic], dim=1)  # (1, 3)
    before = users.utility(probe)
    for _ in range(4):
        _consume(users, item)
    after = users.utility(probe)
    drop = (before - after)[0]
    assert drop[0] > 0.3  # the consumed item itself (strength 0.3 x about 1.4 of satiation)
    assert drop[1] > 0.05  # a similar (same-topic) item
    assert drop[1] > 2 * drop[2].abs()  # a different-topic item barely moves
    # No consumption (never click): satiation decays back.
    users.choice.no_click_utility = 10.0
    for _ in range(12):  # 0.8 ** 12 < 0.07 of the memory is left
        _consume(users, item)
    recovered = users.utility(probe)
    assert (recovered[0, 0] - before[0, 0]).abs() < 0.1 * drop[0]


def test_interests_drift_toward_consumed_items_only_where_configured(space):
    for cls, drifts in ((InterestEvolutionUser, True), (MyopicUser, False)):
        users = _fresh(cls, space, b=1, no_click_utility=-10.0, patience=100)
        # A well-liked item (watched, so it can pull) that is not the user's very best.
        liked = users.affinity(torch.arange(space.num_items).unsqueeze(0))[0]
        item = liked.argsort(descending=True)[10].view(1)
        x = space.fused[item[0]]
        start = users.interest.clone()
        for _ in range(5):
            _consume(users, item)
        cos_before = (start[0] * x).sum() / 2
        cos_after = (users.interest[0] * x).sum() / 2
        if drifts:
            assert cos_after > cos_before + 0.05
        else:
            assert torch.equal(users.interest, start)


def test_time_budget_is_spent_by_consumption_and_partly_refunded(space):
    for refund in (0.0, 0.5):
        users = _fresh(MultimodalUser, space, b=32, no_click_utility=-10.0, refund_rate=refund, step_cost=0.5)
        before = users.budget.clone()
        response = _consume(users, torch.arange(32))
        spent = before - users.budget
        minutes = response.engagement
        assert (minutes > 0).all()
        expected = minutes * (1 - refund * users._watched) + 0.5
        assert torch.allclose(spent, expected, atol=1e-4)
        if refund:
            assert (spent < minutes + 0.5).all()


def test_user_leaves_after_patience_consecutive_disappointments(space):
    users = _fresh(MyopicUser, space, b=16, no_click_utility=10.0, patience=4)  # never clicks
    for step in range(1, 5):
        _consume(users, torch.zeros(16, dtype=torch.long))
        assert users.done().all() == (step == 4)


def test_multinomial_logit_click_frequencies_match_its_probabilities():
    model = MultinomialLogit(temperature=0.5, no_click_utility=0.2)
    utility = torch.tensor([[0.6, 0.1, -0.3]]).expand(20000, 3)
    picks = model.choose(utility, _gen(4))
    expected = model.click_probability(utility[:1])[0]
    freq = torch.stack([(picks == j).float().mean() for j in range(3)])
    assert torch.allclose(freq, expected, atol=0.015)
    assert abs((picks == -1).float().mean() - (1 - expected.sum())) < 0.015


def test_cascade_clicks_the_first_attractive_position():
    model = Cascade(temperature=0.5, no_click_utility=0.0)
    utility = torch.tensor([[0.3, 0.3, 0.3]]).expand(20000, 3)
    picks = model.choose(utility, _gen(5))
    expected = model.click_probability(utility[:1])[0]
    freq = torch.stack([(picks == j).float().mean() for j in range(3)])
    assert torch.allclose(freq, expected, atol=0.015)
    assert expected[0] > expected[1] > expected[2]  # earlier positions are examined first


def test_unknown_choice_model_and_bad_temperature_are_errors():
    with pytest.raises(ValueError, match="unknown choice model 'softmax'.*cascade.*mnl"):
        make_choice_model("softmax", 0.1, 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0; got 0"):
        MultinomialLogit(temperature=0)


def test_unknown_or_invalid_user_parameters_are_errors_naming_them(space):
    with pytest.raises(ValueError, match="unknown user parameter 'patiense'.*'patience'"):
        MultimodalUser(space, 2, patiense=3)
    with pytest.raises(ValueError, match="satiation_decay=1.5 is invalid; expected in \\[0, 1\\)"):
        MultimodalUser(space, 2, satiation_decay=1.5)


# ------------------------------------------------------------------ candidates
def test_uniform_candidates_are_distinct_and_uniform_over_items(space):
    gen = CandidateGenerator(space, num_candidates=20, num_users=4000)
    empty = torch.zeros(4000, 1, dtype=torch.long)
    cand = gen.sample(None, 4000, empty, empty.bool(), _gen(6))
    assert cand.shape == (4000, 20)
    assert (cand.sort(1).values.diff(dim=1) > 0).all()
    counts = torch.bincount(cand.flatten(), minlength=space.num_items).float()
    expected = 4000 * 20 / space.num_items
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    # 199 degrees of freedom: mean 199, sd 20; 300 is a 5-sigma bound.
    assert chi2 < 300
    first = torch.bincount(cand[:, 0], minlength=space.num_items).float()
    assert first.std() / first.mean() < 0.35  # position 0 is uniform too (4000/200 = 20 per item)


def test_exclude_consumed_never_offers_an_item_the_user_clicked(space):
    gen = CandidateGenerator(space, 20, 8, CandidateConfig(exclude_consumed=True), max_consumed=100)
    consumed = torch.arange(8) * 7
    gen.record(consumed, torch.ones(8, dtype=torch.bool))
    empty = torch.zeros(8, 1, dtype=torch.long)
    for _ in range(50):
        cand = gen.sample(torch.arange(8), 8, empty, empty.bool(), _gen(_))
        assert not (cand == consumed.unsqueeze(1)).any()
        assert (cand.sort(1).values.diff(dim=1) > 0).all()


def test_popular_and_similar_sources_mix_into_the_candidates(space):
    config = CandidateConfig(popular=0.25, similar=0.25, similar_neighbours=5)
    gen = CandidateGenerator(space, 20, 64, config)
    history = torch.full((64, 3), 11)
    clicked = torch.ones(64, 3, dtype=torch.bool)
    cand = gen.sample(None, 64, history, clicked, _gen(9))
    assert (cand.sort(1).values.diff(dim=1) > 0).all()
    popular_pool = set(space.quality.argsort(descending=True)[:20].tolist())
    assert all(int(i) in popular_pool for i in cand[:, :5].flatten())
    neighbours = set(gen._neighbours[11].tolist())
    # Similar slots hold neighbours of item 11 unless a duplicate had to be redrawn.
    share = np.mean([int(i) in neighbours for i in cand[:, 5:10].flatten()])
    assert share > 0.8


def test_unknown_or_invalid_candidate_options_are_errors(space):
    with pytest.raises(ValueError, match="unknown candidates option 'popularity'.*'popular'"):
        CandidateConfig.from_options({"popularity": 0.5})
    with pytest.raises(ValueError, match="exceed 1"):
        CandidateConfig(popular=0.7, similar=0.5)
    with pytest.raises(ValueError, match="exclude_consumed needs at least"):
        CandidateGenerator(space, 150, 1, CandidateConfig(exclude_consumed=True), max_consumed=100)


# ------------------------------------------------------------------ registry
def test_registry_resolves_builtin_names_and_lists_them_on_error():
    assert resolve_user_model("satiation") is SatiationUser
    assert {"interest_evolution", "satiation", "myopic", "multimodal"} <= set(registered_user_models())
    with pytest.raises(ValueError, match="unknown user model 'satiated'; registered names: .*'satiation'"):
        resolve_user_model("satiated")


def test_dotted_path_that_does_not_import_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'no_such_pkg.users:Thing': module 'no_such_pkg.users' does not import"):
        resolve_user_model("no_such_pkg.users:Thing")
    with pytest.raises(ValueError, match="has no attribute 'NoSuchUser'"):
        resolve_user_model("recsim_mm.users.multimodal:NoSuchUser")
    with pytest.raises(ValueError, match="malformed"):
        resolve_user_model("recsim_mm.users:")


class NotAUser:
    """Has some of the methods but is not a UserModel."""

    def sample(self, rows, generator):
        pass


class HalfAUser(UserModel):
    """Implements only part of the contract."""

    def sample(self, rows, generator):
        pass

    def respond(self, slate, generator):
        pass


def test_dotted_path_to_a_class_outside_the_contract_is_an_error_naming_what_is_missing():
    with pytest.raises(TypeError, match="does not implement the user model contract.*missing methods: respond, transition"):
        resolve_user_model("tests.test_users:NotAUser")
    with pytest.raises(TypeError, match="abstract methods not implemented: affinity, done, time_left, transition"):
        resolve_user_model("tests.test_users:HalfAUser")
    with pytest.raises(TypeError, match="user model 'half' \\(HalfAUser\\) does not implement"):
        register_user_model("half", HalfAUser)


def _doc_blocks() -> tuple[str, str]:
    """The custom model module block and the dotted-path usage block of docs/user_models.md."""
    text = (DOCS / "user_models.md").read_text(encoding="utf-8")
    module = next(b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if "my_users.py" in b)
    usage = next(b for b in re.findall(r"^```text\n(.*?)^```", text, re.S | re.M) if "my_users:" in b)
    return module, usage


def test_custom_user_model_from_the_docs_runs_an_episode_by_dotted_path(tmp_path, monkeypatch):
    module, usage = _doc_blocks()
    (tmp_path / "my_users.py").write_text(module, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_users", raising=False)
    namespace: dict = {}
    exec(compile(usage, "user_models.md[dotted path]", "exec"), namespace)  # noqa: S102 - our docs
    env, obs = namespace["env"], namespace["obs"]
    assert type(env.unwrapped.simulator.users).__name__ == "ConstantTasteUser"
    assert obs["user_features"].tolist() == [1.0]  # a fresh session: all of it left
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        done = terminated or truncated
    assert terminated and steps == 5  # session_length=5 from user_params
    assert obs["user_features"].tolist() == [0.0]


@pytest.mark.parametrize("cls,near_patience", [(SatiationUser, False), (InterestEvolutionUser, True)])
def test_expected_outcomes_match_simulated_frequencies(space, cls, near_patience):
    """The privileged one-step model the references rank by is what the dynamics do."""
    n = 40_000
    users = cls(space, n)
    one = _fresh(cls, space, b=1, seed=3)
    for _ in range(3):  # build some satiation (and spend some budget)
        _consume(one, one.affinity(torch.arange(space.num_items).unsqueeze(0))[0].argmax().view(1))
    if near_patience:
        one.disappointments.fill_(one.config.patience - 1)
    one.left.fill_(False)
    for name in ("interest", "modality_weight", "_probe", "budget", "disappointments", "left"):
        getattr(users, name).copy_(getattr(one, name).expand_as(getattr(users, name)))
    liked = one.affinity(torch.arange(space.num_items).unsqueeze(0))[0]
    for item in (int(liked.argmax()), int(liked.argsort()[len(liked) // 2])):  # satiated favourite, a middling item
        clone = cls(space, n)
        for name in ("interest", "modality_weight", "_probe", "budget", "disappointments", "left"):
            getattr(clone, name).copy_(getattr(users, name))
        expected = clone.expected_outcomes(torch.full((n, 1), item))
        expected = type(expected)(*(value[0, 0] for value in expected))
        response = _consume(clone, torch.full((n,), item))
        clicked = response.clicked >= 0
        assert abs(clicked.float().mean() - expected.click_probability.item()) < 0.01
        assert abs(response.engagement[clicked].mean() - expected.engagement_if_clicked.item()) < 0.02 * (
            expected.engagement_if_clicked.item() + 1)
        assert abs(clone.done().float().mean() - expected.end_probability.item()) < 0.01

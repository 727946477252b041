"""The shared scorer network: equivariance, observation modes, ablations, bad input."""

from __future__ import annotations

import pytest
import torch

from recsim_mm import ItemSpace
from recsim_mm.scorer import Scorer, ScorerConfig

SPACE = ItemSpace.random(60, d_text=8, d_image=6, seed=3)
VARIANTS = [
    ("attention", "gated"),
    ("attention", "cross_attention"),
    ("gru", "gated"),
    ("gru", "cross_attention"),
]


def ids_obs(batch: int = 4, history: int = 5, candidates: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, history)
    mask[0] = 0.0  # first user: empty history (episode start)
    mask[1, :2] = 0.0  # second user: left padding
    feedback = torch.stack(
        [torch.randint(2, (batch, history), generator=g).float(), 5 * torch.rand(batch, history, generator=g)], -1
    )
    items = torch.randint(SPACE.num_items, (batch, history), generator=g)
    return {
        "history_items": items * mask.long(),
        "history_feedback": feedback * mask.unsqueeze(-1),
        "history_mask": mask,
        "candidate_items": torch.randint(SPACE.num_items, (batch, candidates), generator=g),
        "time_left": 100 * torch.rand(batch, 1, generator=g),
    }


def as_embeddings(obs: dict) -> dict:
    out = dict(obs)
    out["history_items"] = SPACE.fused[obs["history_items"]] * obs["history_mask"].unsqueeze(-1)
    out["candidate_items"] = SPACE.fused[obs["candidate_items"]]
    return out


def make(seed: int = 0, **overrides) -> Scorer:
    torch.manual_seed(seed)
    return Scorer.for_item_space(SPACE, hidden_dim=16, **overrides).eval()


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_scores_are_permutation_equivariant_over_candidates(encoder, fusion):
    scorer = make(user_encoder=encoder, fusion=fusion)
    obs = ids_obs()
    perm = torch.randperm(obs["candidate_items"].shape[1], generator=torch.Generator().manual_seed(1))
    permuted = dict(obs, candidate_items=obs["candidate_items"][:, perm])
    with torch.no_grad():
        torch.testing.assert_close(scorer(permuted), scorer(obs)[:, perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_ids_mode_and_embeddings_mode_give_the_same_scores(encoder, fusion):
    scorer = make(user_encoder=encoder, fusion=fusion)
    obs = ids_obs()
    with torch.no_grad():
        torch.testing.assert_close(scorer(obs), scorer(as_embeddings(obs)), rtol=0, atol=1e-6)
        assert scorer.encode_user(obs).shape == (4, 16)


def test_state_dict_excludes_item_table_and_moves_between_modes():
    with_table = make()
    without = Scorer(with_table.config)
    assert "item_table" not in with_table.state_dict()
    without.load_state_dict(with_table.state_dict())
    obs = ids_obs()
    with torch.no_grad():
        torch.testing.assert_close(without.eval()(as_embeddings(obs)), with_table(obs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_padded_history_steps_do_not_change_scores(encoder):
    scorer = make(user_encoder=encoder)
    obs = ids_obs()
    noisy = dict(obs)
    pad = obs["history_mask"] == 0
    noisy["history_items"] = torch.where(pad, torch.full_like(obs["history_items"], 17), obs["history_items"])
    noisy["history_feedback"] = torch.where(pad.unsqueeze(-1), torch.ones_like(obs["history_feedback"]), obs["history_feedback"])
    with torch.no_grad():
        out = scorer(obs)
        assert torch.isfinite(out).all()  # an all-padding history must not give NaN
        torch.testing.assert_close(scorer(noisy), out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("modality,ignored", [("text", slice(8, 14)), ("image", slice(0, 8))])
def test_modality_ablation_reads_only_its_part(modality, ignored):
    scorer = make(modality=modality)
    obs = as_embeddings(ids_obs())
    changed = {k: v.clone() for k, v in obs.items()}
    changed["candidate_items"][..., ignored] = torch.randn_like(changed["candidate_items"][..., ignored])
    changed["history_items"][..., ignored] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(scorer(changed), scorer(obs), rtol=0, atol=1e-6)
    fused = make(modality="fused")
    with torch.no_grad():
        assert not torch.allclose(fused(changed), fused(obs))


def test_engagement_head_is_non_negative_minutes():
    out = make().predict(ids_obs())
    assert out["engagement"].shape == out["click_logit"].shape == (4, 7)
    assert (out["engagement"] >= 0).all()


def test_missing_key_is_named():
    obs = ids_obs()
    del obs["history_mask"]
    with pytest.raises(KeyError, match="history_mask"):
        make()(obs)


def test_ids_observation_without_item_table_is_refused():
    scorer = Scorer(make().config)
    with pytest.raises(ValueError, match="no item table"):
        scorer(ids_obs())


def test_wrong_embedding_width_is_refused():
    obs = as_embeddings(ids_obs())
    obs["candidate_items"] = obs["candidate_items"][..., :10]
    with pytest.raises(ValueError, match="candidate_items.*14"):
        make()(obs)


@pytest.mark.parametrize(
    "field,value,pattern",
    [("modality", "audio", "modality='audio'"), ("fusion", "sum", "fusion"), ("hidden_dim", 18, "divisible")],
)
def test_invalid_config_is_refused(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        ScorerConfig(d_text=8, d_image=6, **{field: value})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scorer_runs_on_cuda():
    scorer = make().to("cuda")
    obs = {k: v.to("cuda") for k, v in ids_obs().items()}
    cpu = make()(ids_obs())
    torch.testing.assert_close(scorer(obs).cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_catalog_tower_shortcut_matches_per_row_tower_and_gradients(encoder, fusion):
    # 16 users x (5 + 7) lookups > 60 items: ids mode runs the tower once per catalog item.
    obs = ids_obs(batch=16)
    assert obs["history_items"].numel() + obs["candidate_items"].numel() > SPACE.num_items
    ids_scorer = make(user_encoder=encoder, fusion=fusion)
    emb_scorer = make(user_encoder=encoder, fusion=fusion)
    ids_scores = ids_scorer(obs)
    emb_scores = emb_scorer(as_embeddings(obs))
    torch.testing.assert_close(ids_scores, emb_scores, rtol=0, atol=1e-5)
    ids_scores.sum().backward()
    emb_scores.sum().backward()
    for (name, a), (_, b) in zip(ids_scorer.named_parameters(), emb_scorer.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)

"""What a world latent knows: linear (ridge) probes from latents to the objects' positions.

Targets are the dataset's privileged `observation.environment_state`, the entries whose names contain ".pos."
(`<object>.pos.x|y|z`, named in meta/info.json). A probe is a ridge regression in closed form (numpy, float64,
features standardised on the rows it is fitted on), fitted on the training episodes of the pipeline's held-out
split and scored on its held-out episodes, the same ones offline evaluation and `pretrain-world` keep unseen;
the ridge strength is chosen from a small grid on a seeded split, by episode, of the training episodes.

- Present: z_t -> positions at t.
- Future (a trained run): the same readout decodes the Prophet's prediction of z_{t+k}, scored against the
  positions at t+k, beside the readout of z_t (the latent copy-last: what the Prophet starts from), the readout
  of the true z_{t+k} (its ceiling) and the copy-last baseline (the positions at t given as those at t+k).
  One readout fitted on true latents asks whether the prediction lands where the true future latent would.

Probes of the environment state itself (the `env_state` encoder, or the raw vector) are an upper bound, not a
finding: the input contains the targets, so their R² of 1 holds by construction. Their result carries
`UPPER_BOUND` ("upper_bound") and every table of it says so.

R² is 1 - SS_res / SS_tot on the held-out rows (SS_tot about their own mean), per position entry, per object
(pooled over its x, y, z: the variance-weighted mean of its coordinates, which a coordinate that hardly moves
cannot swing) and overall (pooled over every position entry). 0 is the held-out mean; below 0 is worse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.env_state import ENV_STATE_KEY, missing_error, read_env_state

FORMAT = "world-modality-probe/1"
POS_TAG = ".pos."
# Ridge strengths tried, times the number of rows fitted (features are standardised, so X'X ~ rows x correlation).
LAMBDAS = tuple(float(x) for x in np.logspace(-6, 2, 9))
INNER_VAL_FRACTION = 0.2  # training episodes held out to choose the ridge strength
SS_FLOOR = 1e-12  # an entry that does not vary on the scored rows has no R²
WHAT = "world-modality probe"
UPPER_BOUND = "upper bound: the input contains the targets"


def upper_bound(encoder_config: dict | None, raw_env_state: bool = False) -> str | None:
    """UPPER_BOUND for features that hold the targets (the env_state encoder or the raw state), else None."""
    from ..world.env_state import ENV_STATE_NAME

    return UPPER_BOUND if raw_env_state or (encoder_config or {}).get("name") == ENV_STATE_NAME else None


# -- targets ----------------------------------------------------------------------------------------------
def position_columns(names: Sequence[str]) -> tuple[list[int], dict[str, list[int]]]:
    """Indices of the position entries among `names`, and each object's columns among those entries."""
    idx = [i for i, n in enumerate(names) if POS_TAG in n]
    objects: dict[str, list[int]] = {}
    for j, i in enumerate(idx):
        objects.setdefault(names[i].split(POS_TAG, 1)[0], []).append(j)
    return idx, objects


def position_targets(dataset) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """(N, P) object positions of every row, their names, and each object's columns."""
    values, names = read_env_state(dataset, what=WHAT)
    idx, objects = position_columns(names)
    if not idx:
        from ..data.lerobot import DatasetError

        raise DatasetError(
            f"dataset {dataset.root}: no entry of {ENV_STATE_KEY!r} names a position "
            f"('<object>.pos.x'); its entries: {names[:6]}{' ...' if len(names) > 6 else ''}."
        )
    return values[:, idx].astype(np.float64), [names[i] for i in idx], objects


def require_env_state(root: str | Path) -> None:
    """Before any frame is decoded or latent encoded: a dataset whose meta/info.json lists no environment state
    stops here with one line naming the key. (An unreadable info.json is left to the dataset loader's own error.)"""
    try:
        features = json.loads((Path(root) / "meta" / "info.json").read_text()).get("features", {})
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(features, dict) and ENV_STATE_KEY not in features:
        raise missing_error(root, WHAT)


def result_upper_bound(result: dict[str, Any]) -> str | None:
    """A probe result's upper-bound note, also for results written before they carried one (`upper_bound`)."""
    raw = str(result.get("features", "")).startswith("environment_state")
    return result.get("upper_bound") or upper_bound(result.get("encoder"), raw_env_state=raw)


# -- ridge ------------------------------------------------------------------------------------------------
@dataclass
class Ridge:
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    coef: np.ndarray
    lam: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.x_mean) / self.x_scale) @ self.coef + self.y_mean


def fit_ridge(x: np.ndarray, y: np.ndarray, lams: Sequence[float]) -> list[Ridge]:
    """One ridge per strength (alpha = lam x rows), sharing one SVD of the standardised features."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"ridge needs (N, D) features and (N, P) targets with N >= 2, got {x.shape} and {y.shape}")
    mean, sd = x.mean(0), x.std(0)
    scale = np.where(sd > 1e-12, sd, 1.0)  # a constant feature stays 0, not 0/0
    xs, y_mean = (x - mean) / scale, y.mean(0)
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ (y - y_mean)
    return [Ridge(mean, scale, y_mean, vt.T @ ((s / (s**2 + lam * len(x)))[:, None] * uty), float(lam)) for lam in lams]


def r2_scores(y: np.ndarray, pred: np.ndarray, names: Sequence[str], objects: dict[str, list[int]]) -> dict[str, Any]:
    """R² overall (pooled), per object (pooled over its entries) and per entry; None where nothing varies."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    res = ((y - pred) ** 2).sum(0)
    tot = ((y - y.mean(0)) ** 2).sum(0)

    def pooled(cols) -> float | None:
        t = float(tot[cols].sum())
        return None if t <= SS_FLOOR else 1.0 - float(res[cols].sum()) / t

    return {
        "overall": pooled(list(range(y.shape[1]))),
        "objects": {o: pooled(cols) for o, cols in objects.items()},
        "entries": {n: pooled([j]) for j, n in enumerate(names)},
    }


def episode_split(episode_of_row: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into `episode_of_row`) of the kept and the held-out rows: round(fraction x episodes) whole
    episodes, at least one, drawn with `seed`; no episode is on both sides."""
    eps = np.unique(episode_of_row)
    if len(eps) < 2:
        raise ValueError(f"an episode split needs at least 2 episodes, got {len(eps)}")
    held = np.random.default_rng(seed).permutation(eps)[: min(len(eps) - 1, max(1, round(fraction * len(eps))))]
    out = np.isin(episode_of_row, held)
    return np.flatnonzero(~out), np.flatnonzero(out)


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    episode_of_row: np.ndarray,
    names: Sequence[str],
    objects: dict[str, list[int]],
    seed: int = 0,
) -> tuple[Ridge, dict[str, Any]]:
    """The ridge strength with the best overall R² on a seeded episode split of these (training) rows, then
    that strength refitted on all of them. Ties go to the stronger ridge."""
    fit, val = episode_split(episode_of_row, INNER_VAL_FRACTION, seed)
    scores = {}
    for ridge in fit_ridge(x[fit], y[fit], LAMBDAS):
        r2 = r2_scores(y[val], ridge.predict(x[val]), names, objects)["overall"]
        scores[ridge.lam] = -np.inf if r2 is None else r2
    best = max(scores, key=lambda lam: (scores[lam], lam))
    selection = {
        "lambda": best,
        "alpha": best * len(x),
        "validation_r2": {f"{k:g}": v for k, v in scores.items()},
        "validation_episodes": sorted(int(e) for e in np.unique(episode_of_row[val])),
        "seed": int(seed),
    }
    return fit_ridge(x, y, [best])[0], selection


# -- probes -----------------------------------------------------------------------------------------------
def probe_arrays(
    x: np.ndarray,
    positions: np.ndarray,
    names: Sequence[str],
    objects: dict[str, list[int]],
    episode_ids: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    seed: int = 0,
    future_rows: np.ndarray | None = None,
    z_pred_test: np.ndarray | None = None,
    k: int | None = None,
) -> dict[str, Any]:
    """The probe on arrays: features `x` (N, D) of every row, `positions` (N, P). With `future_rows` (row t+k of
    every row) and `z_pred_test` (the Prophet's prediction for each test row), the future readouts too."""
    x, positions = np.asarray(x, np.float64), np.asarray(positions, np.float64)
    train_rows, test_rows = np.asarray(train_rows), np.asarray(test_rows)
    if not len(test_rows):
        raise ValueError(
            "the probe has no held-out rows to score: the dataset needs at least two episodes of a "
            "task (one is held out)"
        )
    if np.intersect1d(episode_ids[train_rows], episode_ids[test_rows]).size:
        raise ValueError("training and held-out rows share an episode; the probe is scored on unseen episodes")
    ridge, selection = fit_probe(x[train_rows], positions[train_rows], episode_ids[train_rows], names, objects, seed)
    result: dict[str, Any] = {
        "format": FORMAT,
        "targets": list(names),
        "objects": list(objects),
        "train_episodes": sorted(int(e) for e in np.unique(episode_ids[train_rows])),
        "test_episodes": sorted(int(e) for e in np.unique(episode_ids[test_rows])),
        "n_train_rows": int(len(train_rows)),
        "n_test_rows": int(len(test_rows)),
        "feature_dim": int(x.shape[1]),
        "ridge": selection,
        "present": r2_scores(positions[test_rows], ridge.predict(x[test_rows]), names, objects),
    }
    if future_rows is not None:
        fut = np.asarray(future_rows)[test_rows]
        truth = positions[fut]
        result["future"] = {"k": k}
        if z_pred_test is not None:
            result["future"]["prophet"] = r2_scores(truth, ridge.predict(z_pred_test), names, objects)
        result["future"].update(
            {
                "latent_copy_last": r2_scores(truth, ridge.predict(x[test_rows]), names, objects),
                "true_future_latent": r2_scores(truth, ridge.predict(x[fut]), names, objects),
                "copy_last": r2_scores(truth, positions[test_rows], names, objects),
            }
        )
    return result


def _split_rows(data) -> tuple[np.ndarray, np.ndarray]:
    return data.train_rows, data.val_rows


def probe_dataset(cfg, encoder=None, *, raw_env_state: bool = False, progress: bool = True) -> dict[str, Any]:
    """Probe a world encoder's z_t on `cfg.data.dataset` (latents through the latent cache, as training reads
    them), or, with `raw_env_state`, the environment state vector itself: an upper bound, since it holds the
    targets. The ridge strength's split is seeded by `cfg.train.seed`."""
    from ..pipeline import prepare_data

    require_env_state(cfg.data.dataset)
    if raw_env_state == (encoder is not None):
        raise ValueError("probe_dataset takes a world encoder or raw_env_state=True, one of them")
    data = prepare_data(cfg, encoder, progress=progress)
    positions, names, objects = position_targets(data.dataset)
    if raw_env_state:
        x = read_env_state(data.dataset, what=WHAT)[0]
        features = {"features": "environment_state (raw vector)", "encoder": None}
    else:
        x = data.latents.latents
        features = {"features": f"z_t of {encoder.encoder_id}", "encoder": encoder.config_dict()}
    features["upper_bound"] = upper_bound(features["encoder"], raw_env_state)
    train_rows, test_rows = _split_rows(data)
    result = probe_arrays(
        x, positions, names, objects, data.dataset.episode_ids, train_rows, test_rows, seed=cfg.train.seed
    )
    return {
        **features,
        "dataset": str(data.dataset.root),
        "checkpoint": None,
        "window": {
            "m": cfg.world.num_frames,
            "frame_stride": cfg.world.frame_stride,
            "camera": cfg.world.world_image_key,
            "image_size": cfg.data.image_size,
        },
        "val_fraction": cfg.data.val_fraction,
        **result,
    }


def probe_run(
    checkpoint: str | Path,
    dataset: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Probe a trained run: its encoder's z_t (present) and its Prophet's prediction of z_{t+k} (future), on
    the run's own held-out episodes, which neither the Prophet nor the probe saw."""
    import torch
    from tqdm.auto import tqdm

    from ..config import ConfigError
    from ..pipeline import FrameSamples, make_collate, prepare_data
    from ..policy.checkpoint import load_checkpoint, read_checkpoint_config
    from ..policy.checkpoint_store import resolve_checkpoint
    from ..policy.device import resolve_device
    from ..policy.factory import build_preprocessor

    device = resolve_device(device)
    ckpt = resolve_checkpoint(checkpoint)
    cfg = read_checkpoint_config(ckpt)
    if dataset:
        cfg = cfg.replace(dataset=dataset)
    require_env_state(cfg.data.dataset)
    if cfg.policy.disable_future_injection and cfg.world.lambda_world == 0:
        raise ConfigError(
            f"run {ckpt} was trained without the world modality (no world encoder, no Prophet); "
            f"probe an encoder on its dataset with --dataset instead."
        )
    policy = load_checkpoint(ckpt, device)
    cfg = policy.cfg
    if dataset:
        cfg = cfg.replace(dataset=dataset)
    data = prepare_data(cfg, policy.world_encoder, progress=progress)
    positions, names, objects = position_targets(data.dataset)
    train_rows, test_rows = _split_rows(data)
    samples = FrameSamples(data, test_rows, cfg.data.image_keys)
    collate = make_collate(build_preprocessor(cfg, policy))
    preds = []
    with torch.no_grad():
        for start in tqdm(range(0, len(samples), batch_size), desc="prophet", disable=not progress, leave=False):
            batch = collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))]).to(device)
            preds.append(policy.context(batch)["z_pred"].float().cpu().numpy())
    z_pred = np.concatenate(preds) if preds else np.zeros((0, data.latents.latent_dim))
    result = probe_arrays(
        data.latents.latents,
        positions,
        names,
        objects,
        data.dataset.episode_ids,
        train_rows,
        test_rows,
        seed=seed,
        future_rows=data.future_rows,
        z_pred_test=z_pred,
        k=cfg.world.future_offset,
    )
    enc = policy.world_encoder
    return {
        "features": f"z_t of {enc.encoder_id}",
        "encoder": enc.config_dict(),
        "upper_bound": upper_bound(enc.config_dict()),
        "dataset": str(data.dataset.root),
        "checkpoint": str(ckpt),
        "window": {
            "m": cfg.world.num_frames,
            "frame_stride": cfg.world.frame_stride,
            "camera": cfg.world.world_image_key,
            "image_size": cfg.data.image_size,
        },
        "val_fraction": cfg.data.val_fraction,
        **result,
    }


# -- output -----------------------------------------------------------------------------------------------
def _r2(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


FUTURE_COLUMNS = (
    ("prophet", "pred z_t+k"),
    ("latent_copy_last", "z_t"),
    ("true_future_latent", "true z_t+k"),
    ("copy_last", "copy-last pos_t"),
)


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (objects, then overall) of the R² table: the present readout, then the future ones."""
    fut = result.get("future") or {}
    cols = [(k, label) for k, label in FUTURE_COLUMNS if k in fut]
    k = fut.get("k")
    header = ["object", "z_t -> pos_t"] + [f"{label} -> pos_t+{k}" for _, label in cols]
    rows = []
    for obj in [*result["objects"], None]:

        def pick(scores):
            return scores["overall"] if obj is None else scores["objects"].get(obj)

        rows.append([obj or "overall", _r2(pick(result["present"]))] + [_r2(pick(fut[c])) for c, _ in cols])
    if bound := result_upper_bound(result):  # its R² of 1 is true by construction: no row may read as a finding
        header.append("")
        rows = [r + [f"({bound})"] for r in rows]
    return header, rows


def format_table(result: dict[str, Any]) -> str:
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    ridge = result["ridge"]
    # probe_arrays alone names neither the features nor the dataset; probe_dataset and probe_run add them.
    head = [
        f"probe of {result.get('features', 'the features given')} on {result.get('dataset', 'the rows given')}"
        + (f" ({bound})" if (bound := result_upper_bound(result)) else ""),
        f"ridge (lambda {ridge['lambda']:g}, chosen on {len(ridge['validation_episodes'])} training episodes) fit "
        f"on {len(result['train_episodes'])} training episodes ({result['n_train_rows']} rows); R² on "
        f"{len(result['test_episodes'])} held-out episodes ({result['n_test_rows']} rows), 1 = exact, "
        f"0 = their mean",
    ]
    return "\n".join(head + ["", line(header), *map(line, rows)])


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path

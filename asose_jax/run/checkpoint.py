"""Run checkpoints (orbax): where a run is, and everything needed to go on from there bit for bit.

One checkpoint = two items in a `CheckpointManager` step folder:
  `state`: the TrainState (params incl. arch, batch stats, both optimizer states, step);
  `meta`:  JSON: phase, next epoch, batches done in it, network spec (growth history included),
           genotype (optimize phase), config, monitor knobs, grower state, the number of
           metrics.jsonl lines written so far (a resume truncates the lines written after it).
Restore reads `meta` first, rebuilds the abstract state from the spec with `jax.eval_shape` (the
caller's `abstract_state(meta)`), then restores `state` into it: a run that grew resumes grown.

Kept on disk: the latest `checkpoint.max_to_keep` and the best by val_acc (`checkpoints/`), and
every pre-growth network (`checkpoints_pre_growth/`, for the grower's rollback).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from asose_jax.run.config import ConfigError
from asose_jax.search import execution
from asose_jax.search.train_state import default_hparams

FORMAT = 2  # 2: the TrainState holds `hparams`; format-1 checkpoints (without) restore with the defaults
# config fields whose change alters the network, the data or their order: a resume refuses them
SHAPE_FIELDS = ('seed', 'data.', 'model.', 'search.batch_size', 'search.arch_every', 'search.warmup_epochs',
                'search.search_epochs', 'optimize.C', 'optimize.layers', 'optimize.batch_size', 'optimize.epochs',
                'optimize.auxiliary', 'growth.', 'parallel.')
# ... but not these: how the same parameters are computed, where the same archive comes from (a checkpoint
# from before a field existed resumes too)
IGNORED_FIELDS = ('data.eval_batch_size', 'data.url', 'data.md5', 'data.cache_dir', 'progress', 'checkpoint.',
                  'model.remat', *(f'model.{f}' for f in execution.FIELDS))


class CheckpointError(RuntimeError):
    """No usable checkpoint although some exist (all partial or corrupt)."""


def _flat(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
    return out


def config_dict(c: ml_collections.ConfigDict) -> dict:
    return json.loads(c.to_json_best_effort())


def incompatible_fields(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) that differ between a checkpoint's config and this run's and change shapes or data."""
    a, b = _flat(saved), _flat(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(IGNORED_FIELDS))
    return [k for k in changed if k == 'seed' or k.startswith(SHAPE_FIELDS)]


def move_aside(workdir: str) -> str | None:
    """`checkpoint.fresh`: renames a non-empty workdir to `<workdir>.old-<time>` (never deletes)."""
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return None
    target = f'{workdir.rstrip(os.sep)}.old-{time.strftime("%Y%m%d-%H%M%S")}'
    n = 0
    while os.path.exists(target + (f'-{n}' if n else '')):
        n += 1
    target += f'-{n}' if n else ''
    shutil.move(workdir, target)
    return target


def _to_host(state):
    return jax.device_get(state)


class RunCheckpoints:
    """The checkpoints of one workdir."""

    def __init__(self, workdir: str, max_to_keep: int = 3):
        workdir = os.path.abspath(workdir)
        self.dir = os.path.join(workdir, 'checkpoints')
        self.pre_growth_dir = os.path.join(workdir, 'checkpoints_pre_growth')
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(max_to_keep),
            cm.BestN(get_metric_fn=lambda m: m['val_acc'], n=1, keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=False,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.dir, options=options, item_names=('state', 'meta'))
        self.pre_growth = ocp.CheckpointManager(
            self.pre_growth_dir, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True),
            item_names=('state', 'meta'))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    @staticmethod
    def _save(manager: ocp.CheckpointManager, state, meta: dict, metrics: dict | None = None) -> int:
        step = max(manager.all_steps(), default=-1) + 1
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_host(state)),
                                                   meta=ocp.args.JsonSave({'format': FORMAT, **meta})),
                     metrics=metrics, force=True)
        manager.wait_until_finished()
        return step

    def save(self, state, meta: dict, val_acc: float | None = None) -> int:
        """Saves (state, meta) as the next checkpoint; `val_acc` ranks it for the kept best one."""
        ok = val_acc is not None and np.isfinite(val_acc)
        return self._save(self.manager, state, meta, {'val_acc': float(val_acc)} if ok else None)

    def save_pre_growth(self, state, meta: dict) -> int:
        return self._save(self.pre_growth, state, meta)

    def restore_pre_growth(self, step: int, abstract_state: Callable[[dict], object]) -> tuple[dict, object]:
        return self._restore(self.pre_growth, step, abstract_state)

    @staticmethod
    def _restore(manager, step, abstract_state):
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
        if meta.get('format') not in (1, FORMAT):
            raise ValueError(f'checkpoint format {meta.get("format")!r}, expected {FORMAT} (or 1)')
        abstract = abstract_state(meta)  # may raise ConfigError (refused override): not a corrupt checkpoint
        legacy = meta['format'] == 1 and hasattr(abstract, 'hparams')
        if legacy:  # saved before the state held its hyper-parameters: the phase sets them from meta's knobs
            abstract = abstract.replace(hparams={})
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']
        return meta, state.replace(hparams=default_hparams()) if legacy else state

    def restore_latest(self, abstract_state: Callable[[dict], object]) -> tuple[int, dict, object] | None:
        """(checkpoint number, meta, state) of the newest checkpoint that reads back; a partial or
        corrupt newer one is skipped with a warning. None when there is none at all."""
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                meta, state = self._restore(self.manager, step, abstract_state)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
                errors.append(f'{step}: {type(e).__name__}: {e}')
                print(f'[checkpoint] WARNING checkpoint {step} in {self.dir} is partial or corrupt '
                      f'({type(e).__name__}: {str(e)[:200]}); falling back to the previous one', flush=True)
                continue
            return step, meta, state
        if steps:
            raise CheckpointError(f'no readable checkpoint in {self.dir}: ' + '; '.join(errors))
        return None

    def close(self) -> None:
        self.manager.close()
        self.pre_growth.close()

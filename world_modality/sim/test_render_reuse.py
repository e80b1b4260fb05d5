"""The render context kept across hard resets (render_reuse.py): episodes draw the same frames and reach the same
states as under robosuite's own rebuilt contexts, and a model compiled from another XML gets a context of its own,
the old one freed before it is built."""

import gc
import weakref

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import numpy as np
import pytest

from world_modality.sim.env import IMAGE_KEY, WRIST_KEY, LiberoEnv
from world_modality.sim.render_reuse import RenderContextKeeper

ACTION = [0.3, -0.2, 0.2, 0.0, 0.0, 0.1, 1.0]


def _episodes(keep: bool) -> tuple[list[np.ndarray], int]:
    """Both cameras' frames and the simulator state at the start of three stored initial states and after two
    steps from each; and how many hard resets kept the context."""
    out = []
    with LiberoEnv("libero_spatial", 1, image_size=64, render_profile="fast") as env:
        keeper = env._render_keeper
        if not keep:  # robosuite's own hard reset: a new render context each time
            env.sim_env._destroy_sim, env.sim_env._initialize_sim = keeper._destroy, keeper._initialize
        for index in (0, 1, 2):
            obs = env.reset(index)
            out += [obs[IMAGE_KEY], obs[WRIST_KEY]]
            for _ in range(2):
                obs, *_ = env.step(ACTION, render=True)
                out += [obs[IMAGE_KEY], obs[WRIST_KEY]]
            out.append(env._env.sim.get_state().flatten())
        return out, keeper.reused


@pytest.mark.sim
def test_a_kept_render_context_draws_the_frames_of_a_rebuilt_one():
    kept, reused = _episodes(keep=True)
    rebuilt, none = _episodes(keep=False)
    assert (reused, none) == (2, 0)  # the first reset after construction builds one (the XML processor's MSAA)
    assert len(kept) == len(rebuilt) == 3 * 7
    assert all(np.array_equal(a, b) for a, b in zip(kept, rebuilt))
    assert not np.array_equal(kept[0], kept[7])  # other starts, other frames: the comparison is not vacuous


class _Context:
    def __init__(self, sim):
        self.sim, self.model, self.data = sim, sim.model, sim.data


class _Sim:
    def __init__(self, xml: str):
        self.model, self.data, self.xml = object(), object(), xml
        self._render_context_offscreen = None

    def add_render_context(self, ctx):
        self._render_context_offscreen = ctx

    def free(self):
        del self._render_context_offscreen


class _Env:
    """robosuite's hard reset in outline: destroy the sim, compile the model's XML, build a context if none."""

    def __init__(self):
        self.xml, self.sim, self._xml_processor = "<mujoco a/>", None, None
        self.model = type("Model", (), {"get_xml": lambda _: self.xml})()
        self.live_when_built: list[bool] = []
        self.keeper = RenderContextKeeper(self)

    def _destroy_sim(self):
        if self.sim is not None:
            self.sim.free()
            self.sim = None

    def _initialize_sim(self, xml_string=None):
        self.sim = _Sim(self._xml_processor(xml_string) if self._xml_processor else xml_string)

    def reset(self, old: weakref.ref | None = None):
        """A hard reset; `old`, a weak reference to the previous context, says whether it was still alive when a
        new one was built."""
        self._destroy_sim()
        self._initialize_sim()
        if self.sim._render_context_offscreen is None:
            gc.collect()
            self.live_when_built.append(old is not None and old() is not None)
            self.sim.add_render_context(_Context(self.sim))
        return weakref.ref(self.sim._render_context_offscreen)


def test_only_a_model_of_the_same_xml_keeps_the_context_and_the_old_one_is_freed_first():
    env = _Env()
    first = env.reset()  # built before anything was compiled under the keeper: not kept
    assert env.reset()() is first() and first().sim is env.sim and first().model is env.sim.model
    env.xml = "<mujoco b/>"
    other = env.reset(first)
    assert first() is None and other() is not None
    assert env.live_when_built == [False, False]  # the old context was freed before the new one was built
    env._xml_processor = lambda xml: xml.replace("b", "c")  # another processor: another model from the same XML
    assert env.reset(other)() is not None and other() is None
    assert env.keeper.reused == 1
    env._destroy_sim()
    env.keeper.release()
    assert env.keeper._held is None

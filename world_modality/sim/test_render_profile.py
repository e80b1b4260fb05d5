"""Render profiles in the real simulator: a frame is rendered with the settings of its profile, after every reset
(the first hard reset builds the render context once, with the profile's MSAA written into the model's XML, and
later ones keep it), simplified meshes change a frame a little, neither they nor the edited XML change the
physics, and a generated dataset records its profile."""

import json

import libero.libero  # noqa: F401  (a hard dependency: a broken install fails here, never skips)
import mujoco
import numpy as np
import pytest

from world_modality.sim.env import CAMERAS, WRIST_KEY, LiberoEnv
from world_modality.sim.render_profile import (
    PROFILES,
    PUBLIC_PROFILE,
    recorded_profile,
    render_profile,
    with_offscreen_samples,
)

pytestmark = pytest.mark.sim

# Six steps of 7-D delta end-effector actions, gripper open.
ACTIONS = np.random.default_rng(0).uniform(-0.6, 0.6, (6, 7)) * [1, 1, 1, 0.2, 0.2, 0.2, 0] + [0, 0, 0, 0, 0, 0, -1]


def _mesh_arrays(env) -> dict:
    model = env._env.sim.model._model
    return {f: np.array(getattr(model, f)) for f in dir(model) if f.startswith("mesh_")}


def _run(profile: str) -> dict:
    """Frames and settings after two resets, the MSAA samples of each render context built by each reset and its
    first frame, the physics model's mesh arrays before and after rendering, the states of a short rollout rendered
    at every step, and the task's model XML."""
    built: list[int] = []

    class CountedContext(mujoco.MjrContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.offSamples)

    frames, settings, builds = [], [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mujoco, "MjrContext", CountedContext)  # robosuite looks it up on the module at each build
        with LiberoEnv("libero_spatial", 0, image_size=64, render_profile=profile) as env:
            for _ in range(2):  # the second reset keeps the render context: the profile must hold again
                built.clear()
                env.reset(0, render=False)
                meshes = _mesh_arrays(env)
                frames.append(env.render())
                settings.append(env.render_settings())
                builds.append(list(built))
            states = []
            for action in ACTIONS:
                env.step(action, render=True)
                states.append(env._env.sim.get_state().flatten())
            meshes_after = _mesh_arrays(env)
            xml = env.sim_env.model.get_xml()
    return {
        "frames": frames,
        "settings": settings,
        "builds": builds,
        "xml": xml,
        "meshes": meshes,
        "meshes_after": meshes_after,
        "states": np.stack(states),
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    return {name: _run(name) for name in PROFILES}


def test_each_profile_renders_with_its_recorded_settings(runs):
    for name, run in runs.items():
        want = render_profile(name).expected_settings()
        frames, settings = run["frames"], run["settings"]
        assert [{k: v for k, v in s.items() if k != "render_faces"} for s in settings] == [want, want], name
        assert np.array_equal(frames[0], frames[1]), name  # same start, same settings: the same pixels
    # The profiles give other pixels (anti-aliased edges, shadows): the settings above are not vacuous.
    diff = np.abs(runs["libero"]["frames"][0].astype(int) - runs["fast"]["frames"][0].astype(int))
    assert diff.mean() > 0.5 and diff.max() > 40


def test_the_first_hard_reset_builds_one_render_context_with_the_profiles_samples_and_later_ones_keep_it(runs):
    # The reset and its first frame build exactly one context, already with the profile's MSAA: none built with
    # MuJoCo's default 4x and rebuilt when the profile is applied. The next hard reset compiles the same XML and
    # keeps that context (sim/render_reuse.py), drawing the same frame.
    for name, run in runs.items():
        samples = render_profile(name).msaa_samples
        assert run["builds"] == [[samples], []], name


def test_the_profiles_model_xml_changes_its_samples_and_nothing_else(runs):
    def saved(model) -> np.ndarray:
        buffer = np.empty(mujoco.mj_sizeModel(model), np.uint8)
        mujoco.mj_saveModel(model, None, buffer)
        return buffer

    xml = runs["fast"]["xml"]  # the task's model XML as robosuite writes it, before the profile's edit
    own, edited = (mujoco.MjModel.from_xml_string(x) for x in (xml, with_offscreen_samples(xml, 0)))
    assert (own.vis.quality.offsamples, edited.vis.quality.offsamples) == (4, 0)
    edited.vis.quality.offsamples = own.vis.quality.offsamples
    np.testing.assert_array_equal(saved(edited), saved(own))  # every other field of the compiled model
    # The rollout on the edited model moves as on the model libero leaves as it is.
    np.testing.assert_array_equal(runs["fast"]["states"], runs["libero"]["states"])
    # A quality element the XML already has keeps its other settings; one it lacks is added.
    assert with_offscreen_samples('<mujoco><visual><quality shadowsize="2048"/></visual></mujoco>', 2) == (
        '<mujoco><visual><quality shadowsize="2048" offsamples="2" /></visual></mujoco>'
    )
    assert with_offscreen_samples("<mujoco><worldbody/></mujoco>", 0) == (
        '<mujoco><worldbody /><visual><quality offsamples="0" /></visual></mujoco>'
    )


def test_lean_frames_draw_fewer_faces_and_differ_little_from_fast(runs):
    faces = [s["render_faces"] for s in runs["lean"]["settings"]]
    full = int(runs["lean"]["meshes"]["mesh_facenum"].sum())
    assert faces[0] == faces[1] < full / 2  # measured: 120,636 of 307,208
    diff = np.abs(runs["lean"]["frames"][0].astype(int) - runs["fast"]["frames"][0].astype(int))
    against_libero = np.abs(runs["libero"]["frames"][0].astype(int) - runs["fast"]["frames"][0].astype(int))
    # Not the same pixels (the meshes did change), but edges move by about a pixel and little else: the mean
    # difference is a fraction of the one between fast and libero (measured at 64 px: 0.78 against 4.5), and few
    # pixels differ visibly (measured: 1.25 % by more than 20, against 8.4 % for libero).
    assert diff.max() > 40 and diff.mean() > 0.1
    assert diff.mean() < against_libero.mean() / 2
    assert (diff.max(axis=-1) > 20).mean() < 0.04


def test_lean_meshes_leave_the_physics_untouched(runs):
    fast, lean = runs["fast"], runs["lean"]
    for name in fast["meshes"]:
        assert np.array_equal(lean["meshes"][name], fast["meshes"][name]), name
        assert np.array_equal(lean["meshes_after"][name], lean["meshes"][name]), name
    np.testing.assert_array_equal(lean["states"], fast["states"])
    assert np.abs(np.diff(lean["states"], axis=0)).max() > 1e-3  # the rollout moved


def test_a_frame_that_outgrows_the_buffer_is_drawn_lean_too():
    from world_modality.sim.mesh_lod import upload_meshes

    with LiberoEnv("libero_spatial", 0, image_size=64, render_profile="lean") as env:
        env.reset(0, render=False)
        env.render()
        sim = env._env.sim
        con = sim._render_context_offscreen.con  # not kept: freeing it later would disturb the current context
        size = (con.offHeight + 8, con.offWidth + 8)  # robosuite rebuilds the context's buffer, and its meshes
        del con
        env.camera_sizes = {WRIST_KEY: size}
        lean = env.render(WRIST_KEY)
        settings = env.render_settings()
        ctx = sim._render_context_offscreen
        assert (ctx.con.offHeight, ctx.con.offWidth) == size
        ctx.gl_ctx.make_current()
        upload_meshes(sim.model._model, ctx.con)  # the model's own meshes, behind the profile's back
        full = np.rot90(sim.render(camera_name=CAMERAS[WRIST_KEY], width=size[1], height=size[0]), 2)
    assert settings == {**render_profile("lean").expected_settings(), "render_faces": settings["render_faces"]}
    largest = int(np.abs(lean.astype(int) - full.astype(int)).max())
    assert largest > 40  # drawn from the profile's meshes, not those the rebuilt buffer came with


def test_unknown_profile_is_refused_before_the_simulator_starts():
    with pytest.raises(ValueError, match=r"unknown render profile 'dark'; expected one of libero, fast"):
        LiberoEnv("libero_spatial", 0, render_profile="dark")


def test_recorded_profile_of_a_dataset():
    assert recorded_profile({}) == recorded_profile({"features": {}}) == PUBLIC_PROFILE == "libero"
    assert recorded_profile({"render_profile": "fast"}) == "fast"
    assert recorded_profile({"render_profile": "lean"}) == "lean"
    with pytest.raises(ValueError, match="unknown render profile 'neon'"):
        recorded_profile(json.loads('{"render_profile": "neon"}'))
    # Generated data also records the profile's settings: those of its profile now, or refused.
    for name in PROFILES:
        info = {"render_profile": name, "render_settings": render_profile(name).record()}
        assert recorded_profile(json.loads(json.dumps(info))) == name
    older = {"render_profile": "lean", "render_settings": {**render_profile("lean").record(), "mesh_cell_mm": 4.0}}
    with pytest.raises(ValueError, match=r"render_settings \{.*'mesh_cell_mm': 4.0.*profile 'lean' is now \{"):
        recorded_profile(older)

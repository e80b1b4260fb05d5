"""LIBERO env wrapper: dataset-schema observations, public protocol, render-on-demand cameras."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from world_modality.sim.gl import quiet_robosuite_macros, select_gl
from world_modality.sim.suites import CONTROL_FREQ, NOOP_ACTION, SETTLE_STEPS, load_task, step_limit
from world_modality.sim.transforms import flip_image, state8

IMAGE_KEY = "observation.images.image"
WRIST_KEY = "observation.images.wrist_image"
STATE_KEY = "observation.state"
CAMERAS = {IMAGE_KEY: "agentview", WRIST_KEY: "robot0_eye_in_hand"}

Observation = dict[str, Any]


class LiberoEnv:
    """One LIBERO task; actions are 7-D delta EEF [dx dy dz droll dpitch dyaw gripper].

    Gripper convention (same as the env and the public LeRobot LIBERO data): -1 = open, +1 = close.
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        image_size: int = 128,
        seed: int = 0,
        render_mode: str = "auto",
        max_steps: int | None = None,
        settle_steps: int = SETTLE_STEPS,
        render_profile: str = "libero",
        camera_sizes: Mapping[str, tuple[int, int]] | None = None,
    ):
        """camera_sizes: (height, width) per camera key, overriding image_size; a policy trained on
        frames recorded at another size sees them rendered at that size, then resized as in training.
        render_profile: `sim/render_profile.py` (the dataset's, for a policy trained on it)."""
        from world_modality.sim.render_profile import render_profile as _profile
        from world_modality.sim.render_profile import with_offscreen_samples

        self.render_profile = _profile(render_profile)
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}.")
        self.camera_sizes = {k: (int(h), int(w)) for k, (h, w) in (camera_sizes or {}).items()}
        bad = {k: v for k, v in self.camera_sizes.items() if k not in CAMERAS or min(v) <= 0}
        if bad:
            raise ValueError(f"camera_sizes must map cameras {sorted(CAMERAS)} to positive (height, width), got {bad}.")
        self.gl_backend = select_gl(render_mode)  # must precede the first robosuite import
        quiet_robosuite_macros()
        from libero.libero.envs import OffScreenRenderEnv

        self.suite, self.task_id, self.image_size, self.seed = suite, task_id, image_size, seed
        task, self._init_states, bddl = load_task(suite, task_id)
        from world_modality.sim.suites import task_instruction

        # The instruction the policy is given: a LIBERO-PRO suite's perturbed BDDL language where it differs
        # from the base suite's (`_lan`, `_task`), else the file-name instruction the public data stores under
        # `task`; base_instruction is the standard suite's file-name instruction (the training data's).
        self.task, self.base_instruction = task_instruction(suite, task_id)
        self.task_name = task.name
        self.max_steps = step_limit(suite) if max_steps is None else max_steps
        self.settle_steps = settle_steps
        # use_camera_obs=False: robosuite would otherwise render both cameras on every control step.
        self._env = OffScreenRenderEnv(
            bddl_file_name=str(bddl),
            camera_heights=image_size,
            camera_widths=image_size,
            use_camera_obs=False,
            control_freq=CONTROL_FREQ,
        )
        # Each hard reset compiles the model from its XML and robosuite builds the render context at once, with the
        # XML's MSAA (MuJoCo's default 4x for LIBERO's scenes). Written into the XML, the profile's samples reach that
        # build; set afterwards, they cost a second build (textures and meshes uploaded again). A profile with the
        # XML's own samples leaves the XML as it is.
        msaa = self.render_profile.msaa_samples
        if self._env.sim.model.vis.quality.offsamples != msaa:
            self._env.env.set_xml_processor(lambda xml: with_offscreen_samples(xml, msaa))
        from world_modality.sim.render_reuse import RenderContextKeeper

        self._render_keeper = RenderContextKeeper(self._env.env)
        self._raw: dict[str, np.ndarray] | None = None
        self.t = 0
        self.done = True

    # --- protocol -------------------------------------------------------------------------------
    @property
    def num_init_states(self) -> int:
        return len(self._init_states)

    def reset(
        self,
        init_state_index: int = 0,
        render: bool = True,
        start_state: np.ndarray | None = None,
        placement_seed: int | None = None,
    ) -> Observation | None:
        """Restore a start state, run the settle no-ops, return the first observation.

        The start is the benchmark's stored initial state `init_state_index`; or `start_state`, a flattened
        simulator state recorded earlier; or, with `placement_seed`, a fresh placement: the task's BDDL
        regions sampled by LIBERO's own reset with the global RNG seeded, as LIBERO sampled its stored
        states. `self.start_state` is the start used, before the settle steps."""
        if start_state is None and placement_seed is None and not 0 <= init_state_index < self.num_init_states:
            raise ValueError(
                f"init_state_index must be in [0, {self.num_init_states - 1}] for "
                f"{self.suite} task {self.task_id}, got {init_state_index}."
            )
        # Seeding per reset keeps an episode reproducible whatever ran before it in this process.
        self._env.seed(int(placement_seed) if placement_seed is not None else self.seed + init_state_index)
        # LIBERO's hard reset appends the scene's articulation samplers (drawers, knobs) again on every model load
        # without dropping the old ones, and each draws from the seeded RNG before the placement: a fresh
        # placement would depend on how many resets this simulator ran before it (on which worker got the job).
        inner = self._env.env
        if isinstance(getattr(inner, "object_property_initializers", None), list):
            inner.object_property_initializers.clear()
        self._env.reset()
        if placement_seed is not None:
            state = np.asarray(self._env.get_sim_state(), dtype=np.float64).copy()
        elif start_state is not None:
            state = np.asarray(start_state, dtype=np.float64)
        else:
            state = np.asarray(self._init_states[init_state_index], dtype=np.float64)
        if state.shape != self._init_states[0].shape:
            raise ValueError(
                f"start_state has shape {state.shape}; {self.suite} task {self.task_id} has "
                f"simulator states of shape {self._init_states[0].shape}."
            )
        self.start_state = state
        self._raw = self._env.set_init_state(state)
        for _ in range(self.settle_steps):
            self._raw, _, _, _ = self._env.step(list(NOOP_ACTION))
        self.t, self.done = 0, False
        return self.observe() if render else None

    @property
    def stored_init_states(self) -> np.ndarray:
        """The benchmark's stored initial states of this task (n, state_dim)."""
        return np.asarray(self._init_states, dtype=np.float64)

    def step(self, action, render: bool = False) -> tuple[Observation | None, bool, bool, dict]:
        """Apply one 7-D action; returns (obs if render else None, done, success, info)."""
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset() first.")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"action must have 7 values [dx dy dz droll dpitch dyaw gripper], got {action.shape}.")
        self._raw, _, env_done, _ = self._env.step(action)
        self.t += 1
        success = bool(env_done)  # LIBERO's step sets done = _check_success() (BDDL goal)
        self.done = success or self.t >= self.max_steps
        info = {"t": self.t, "timeout": not success and self.done}
        return (self.observe() if render else None), self.done, success, info

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    # --- observations ---------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """8-D `observation.state` without rendering anything."""
        r = self._raw
        return state8(r["robot0_eef_pos"], r["robot0_eef_quat"], r["robot0_gripper_qpos"])

    def render(self, key: str = IMAGE_KEY) -> np.ndarray:
        """One camera frame (H, W, 3) uint8, rotated 180 degrees like the public data."""
        h, w = self.camera_sizes.get(key, (self.image_size, self.image_size))
        self._configure_renderer(w, h)
        raw = self._env.sim.render(camera_name=CAMERAS[key], width=w, height=h)
        return flip_image(raw)

    def observe(self) -> Observation:
        """Full observation in the dataset schema (renders both cameras)."""
        return {
            IMAGE_KEY: self.render(IMAGE_KEY),
            WRIST_KEY: self.render(WRIST_KEY),
            STATE_KEY: self.state(),
            "task": self.task,
        }

    # --- privileged access (scripted expert, annotations) ---------------------------------------
    @property
    def sim_env(self):
        """The underlying LIBERO/robosuite env (privileged: object poses, goal predicates)."""
        return self._env.env

    @property
    def raw_obs(self) -> dict[str, np.ndarray]:
        """Last low-dimensional robosuite observation (no images)."""
        return self._raw

    def _state_layout(self) -> tuple[list[str], np.ndarray]:
        """Names of the environment state (data/env_state.py: movable objects' poses, then articulated
        joints) and the qpos address of each entry. Read from the simulator model each time: a hard reset
        rebuilds it, and the cost is a few dozen lookups."""
        from world_modality.data.env_state import POSE_FIELDS, state_names

        env, model = self.sim_env, self._env.sim.model
        free, hinged = {}, {}
        for obj_name, obj in sorted({**env.fixtures_dict, **env.objects_dict}.items()):
            for joint in obj.joints:
                kind = int(model.jnt_type[model.joint_name2id(joint)])
                addr = model.get_joint_qpos_addr(joint)
                if kind == 0:  # free joint: qpos is the body's world pose (x y z, quaternion w x y z)
                    free[obj_name] = list(range(addr[0], addr[1]))
                elif kind in (2, 3):  # slide or hinge: one position
                    short = joint[len(obj_name) + 1 :] if joint.startswith(f"{obj_name}_") else joint
                    hinged[(obj_name, short)] = [int(addr)]
                else:
                    raise ValueError(
                        f"{self.suite} task {self.task_id}: joint {joint!r} of {obj_name!r} is a ball "
                        f"joint, which the environment state does not describe (free, hinge, slide)."
                    )
        names = state_names(free, hinged)
        index = []
        for o in sorted(free):
            if len(free[o]) != len(POSE_FIELDS):
                raise ValueError(f"free joint of {o!r} has {len(free[o])} qpos values, expected {len(POSE_FIELDS)}.")
            index += free[o]
        for key in sorted(hinged):
            index += hinged[key]
        return names, np.asarray(index, dtype=np.int64)

    def environment_state_names(self) -> list[str]:
        """The name of each `environment_state()` entry, e.g. 'akita_black_bowl_1.pos.x', ...,
        'wooden_cabinet_1.top_level.qpos'; fixed per task (data/env_state.py describes the layout)."""
        return self._state_layout()[0]

    def environment_state(self) -> np.ndarray:
        """Privileged object state now, float32 as datasets store it (`observation.environment_state`):
        movable objects' poses, then articulated joints, in `environment_state_names()` order. Read from the
        simulator's qpos, so it is exact for the current physics state and costs no rendering."""
        return np.asarray(self._env.sim.data.qpos, dtype=np.float64)[self._state_layout()[1]].astype(np.float32)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._render_keeper.release()
            self._env = None

    def __enter__(self) -> LiberoEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _configure_renderer(self, width: int = 0, height: int = 0) -> None:
        """Apply the render profile to the current render context before a frame of width x height: a hard reset
        rebuilds it from the model file (the profile's MSAA, written into it; shadows on, the model's full meshes),
        and robosuite rebuilds it when a frame outgrows its buffer."""
        import weakref

        import mujoco

        sim = self._env.sim
        profile = self.render_profile
        sim.model.vis.quality.offsamples = profile.msaa_samples  # a context built later takes it
        ctx = sim._render_context_offscreen
        if ctx is None:
            sim.render(camera_name=CAMERAS[IMAGE_KEY], width=8, height=8)  # build it now, to configure it
            ctx = sim._render_context_offscreen
        if width > ctx.con.offWidth or height > ctx.con.offHeight:
            # Grown here as robosuite would while rendering this frame, so that the frame is drawn with the profile's
            # meshes rather than those of a context rebuilt after they were uploaded.
            ctx.gl_ctx.make_current()
            vis = sim.model.vis.global_
            ctx.update_offscreen_size(max(width, vis.offwidth), max(height, vis.offheight))
        # Marked on the context itself: a reference kept here would free the old context's GL state later, under
        # the new one (black frames). The weak reference to its MjrContext tells a rebuilt buffer (meshes uploaded
        # afresh from the physics model) from the one configured.
        con_ref = getattr(ctx, "_render_con", None)
        if getattr(ctx, "_render_profile", None) == profile.name and con_ref is not None and con_ref() is ctx.con:
            return
        if ctx.con.offSamples != profile.msaa_samples:
            # Only a context built before the XML was edited: the env construction's (a frame before the first reset).
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()  # robosuite's own rebuild, as when the buffer grows
        on = int(profile.shadows)
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = on
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = on
        ctx._render_meshes = None
        if profile.mesh_cell_mm is not None:
            from world_modality.sim.mesh_lod import render_model, upload_meshes

            model = sim.model._model
            lean = render_model(model, profile.mesh_cell_mm, profile.mesh_min_vertices)
            ctx.gl_ctx.make_current()
            faces = upload_meshes(lean, ctx.con, changed_from=model)
            ctx._render_meshes = {
                "mesh_cell_mm": profile.mesh_cell_mm,
                "mesh_min_vertices": profile.mesh_min_vertices,
                "render_faces": faces,
            }
        ctx._render_con = weakref.ref(ctx.con)
        ctx._render_profile = profile.name

    def render_settings(self) -> dict:
        """The settings the current render context actually uses (what a frame was rendered with); under simplified
        meshes also their cell, vertex threshold and the faces all the context's meshes hold (`render_faces`)."""
        import mujoco

        self._configure_renderer()
        ctx = self._env.sim._render_context_offscreen
        return {
            "msaa_samples": int(ctx.con.offSamples),
            "shadows": bool(ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW]),
            "reflections": bool(ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION]),
            **(ctx._render_meshes or {}),
        }

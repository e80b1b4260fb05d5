"""One render context per task, kept across hard resets. LIBERO's hard reset compiles the task's model again from the
same XML, and robosuite would build a new render context for it, uploading every texture and mesh again (a sixth
of an evaluation worker's time); from the same XML the same assets would be uploaded, so the context built for the
previous model is bound to the new one instead. A model from another XML gets a context of its own, as before."""

from __future__ import annotations

import hashlib


class RenderContextKeeper:
    """Wraps a robosuite env's `_destroy_sim` and `_initialize_sim` (on the instance): the offscreen render context
    of the sim being destroyed is held, and bound to the next sim when that one is compiled from the same XML through
    the same XML processor; otherwise it is freed before the next is built, so that freeing it never runs under
    another context's GL state."""

    def __init__(self, env):
        self._env = env
        self._destroy, self._initialize = env._destroy_sim, env._initialize_sim
        self._held = None  # the destroyed sim's render context
        # What the current sim was compiled from: its XML's digest before the env's XML processor, and that processor
        # (the same function of the same string compiles the same model; processing it here too would parse it twice).
        self._compiled_from = None  # None: unknown (built before this keeper)
        self.reused = 0  # hard resets that kept the context
        env._destroy_sim = self._destroy_sim
        env._initialize_sim = self._initialize_sim

    def _destroy_sim(self) -> None:
        sim = self._env.sim
        self._held = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        self._destroy()  # sim.free() drops only the sim's reference to the context

    def _initialize_sim(self, xml_string=None) -> None:
        env = self._env
        xml = xml_string if xml_string else env.model.get_xml()
        source = (hashlib.sha256(xml.encode()).hexdigest(), getattr(env, "_xml_processor", None))
        ctx, self._held = self._held, None
        same = self._compiled_from is not None and source[0] == self._compiled_from[0]
        if ctx is not None and not (same and source[1] is self._compiled_from[1]):
            ctx = None  # freed here, while no other context is current
        self._initialize(xml)  # the original applies the processor to the same string
        self._compiled_from = source
        if ctx is not None:
            sim = env.sim
            ctx.sim, ctx.model, ctx.data = sim, sim.model, sim.data
            sim.add_render_context(ctx)
            self.reused += 1

    def release(self) -> None:
        """Free a held context (after the env is closed)."""
        self._held = None

"""Render profiles: the camera settings a dataset's frames were rendered with, recorded in its meta/info.json and
used again by every evaluation of a policy trained on it (a policy sees the pixels it was trained on)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass

INFO_KEY = "render_profile"  # meta/info.json and a checkpoint's data_info: the profile's name
SETTINGS_KEY = "render_settings"  # meta/info.json of generated data: the profile's record()


@dataclass(frozen=True)
class RenderProfile:
    name: str
    msaa_samples: int  # multisample anti-aliasing of the off-screen buffer (MuJoCo's vis.quality.offsamples)
    shadows: bool  # shadows and reflections
    # Meshes of more than mesh_min_vertices vertices are drawn simplified on a grid of mesh_cell_mm (sim/mesh_lod.py;
    # rendering only, the physics model is untouched); None: every mesh as the model has it.
    mesh_cell_mm: float | None = None
    mesh_min_vertices: int | None = None

    def __post_init__(self):
        if (self.mesh_cell_mm is None) != (self.mesh_min_vertices is None):
            raise ValueError(
                f"render profile {self.name!r}: mesh_cell_mm ({self.mesh_cell_mm!r}) and mesh_min_vertices "
                f"({self.mesh_min_vertices!r}) are set together or not at all."
            )

    def record(self) -> dict:
        """What a dataset's meta/info.json records; a profile drawing the model's own meshes records no mesh fields,
        so the records of the profiles that predate simplified meshes are unchanged."""
        out = asdict(self)
        if self.mesh_cell_mm is None:
            del out["mesh_cell_mm"], out["mesh_min_vertices"]
        return out

    def expected_settings(self) -> dict:
        """What `LiberoEnv.render_settings()` reads back from a render context using this profile, less the face
        count it also reports under simplified meshes (`render_faces`, which depends on the task's meshes)."""
        out = {"msaa_samples": self.msaa_samples, "shadows": self.shadows, "reflections": self.shadows}
        if self.mesh_cell_mm is not None:
            out |= {"mesh_cell_mm": self.mesh_cell_mm, "mesh_min_vertices": self.mesh_min_vertices}
        return out


# libero: LIBERO's own settings (4x MSAA, shadows, reflections), those of the public datasets. fast: both off; on a
# CPU (llvmpipe) a frame costs about a third (bench/results/eval_throughput.json, floor.render_profiles), with a mean
# pixel difference of about 3/255. lean: fast, with the meshes of over 8000 vertices (bowls, robot links; a bowl has
# 42k faces) drawn from clusters of 6 mm, about a pixel of a 128 px agent-view frame: a scene's 307k faces become 121k
# (libero_spatial), a 128 px frame costs about 0.4 of a fast one (CPU time) with a mean pixel difference of 0.7-0.8/255
# (4 mm: 0.45 of the time, 0.55/255; 8 mm: 0.34, 0.86/255; libero_spatial task 0).
PROFILES = {
    "libero": RenderProfile("libero", msaa_samples=4, shadows=True),
    "fast": RenderProfile("fast", msaa_samples=0, shadows=False),
    "lean": RenderProfile("lean", msaa_samples=0, shadows=False, mesh_cell_mm=6.0, mesh_min_vertices=8000),
}
PUBLIC_PROFILE = "libero"  # data that records no profile: public LIBERO data, and datasets generated before profiles
DEFAULT_GENERATED = "fast"


def render_profile(name: str) -> RenderProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown render profile {name!r}; expected one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def with_offscreen_samples(xml: str, samples: int) -> str:
    """The MJCF model `xml` with the off-screen buffer's MSAA samples (`<visual><quality offsamples>`) set to
    `samples`; nothing else in it changes (the physics compiles to the same model)."""
    root = ET.fromstring(xml)
    qualities = root.findall("visual/quality")
    if not qualities:
        visual = root.find("visual")
        qualities = [ET.SubElement(ET.SubElement(root, "visual") if visual is None else visual, "quality")]
    for quality in qualities:
        quality.set("offsamples", str(int(samples)))
    return ET.tostring(root, encoding="unicode")


def recorded_profile(info: dict | None) -> str:
    """The profile a dataset's meta/info.json (or a checkpoint's data_info) records; the public one if none. Where it
    also records the profile's settings (generated data: `render_settings`), they must be the profile's now: a profile
    whose settings changed since would render other pixels under the same name."""
    info = info or {}
    name = info.get(INFO_KEY) or PUBLIC_PROFILE
    now = render_profile(name).record()
    then = info.get(SETTINGS_KEY)
    if then is not None and then != now:
        raise ValueError(
            f"the data's frames were rendered with {SETTINGS_KEY} {then}, but render profile {name!r} is now {now}; "
            f"its policies would be evaluated on other pixels than those they were trained on."
        )
    return name


def check_profile(asked: str | None, policy_profile: str, where: str) -> str:
    """The profile to evaluate with: the policy's; a different one asked for is refused, naming both."""
    if asked is not None and asked != policy_profile:
        render_profile(asked)
        raise ValueError(
            f"--render_profile {asked!r} differs from {policy_profile!r}, the profile the policy's training frames "
            f"were rendered with ({where}); a policy is evaluated on the pixels it was trained on. Leave the flag out."
        )
    return policy_profile

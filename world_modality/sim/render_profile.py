"""Render profiles: the camera settings a dataset's frames were rendered with, recorded in its meta/info.json and
used again by every evaluation of a policy trained on it (a policy sees the pixels it was trained on)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

INFO_KEY = "render_profile"  # meta/info.json and a checkpoint's data_info: the profile's name


@dataclass(frozen=True)
class RenderProfile:
    name: str
    msaa_samples: int  # multisample anti-aliasing of the off-screen buffer (MuJoCo's vis.quality.offsamples)
    shadows: bool  # shadows and reflections

    def record(self) -> dict:
        return asdict(self)


# libero: LIBERO's own settings (4x MSAA, shadows, reflections), those of the public datasets. fast: both off; on a
# CPU (llvmpipe) a frame costs about a third (bench/results/eval_throughput.json, floor.render_profiles), with a mean
# pixel difference of about 3/255.
PROFILES = {
    "libero": RenderProfile("libero", msaa_samples=4, shadows=True),
    "fast": RenderProfile("fast", msaa_samples=0, shadows=False),
}
PUBLIC_PROFILE = "libero"  # data that records no profile: public LIBERO data, and datasets generated before profiles
DEFAULT_GENERATED = "fast"


def render_profile(name: str) -> RenderProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown render profile {name!r}; expected one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def recorded_profile(info: dict | None) -> str:
    """The profile a dataset's meta/info.json (or a checkpoint's data_info) records; the public one if none."""
    name = (info or {}).get(INFO_KEY) or PUBLIC_PROFILE
    render_profile(name)
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

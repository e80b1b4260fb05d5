"""World Modality: does a world model, injected as an extra modality, make a VLA policy act better?"""

from .toolchain import cap_simd

# Before anything imports numpy or torch: a result must not depend on whether the CPU has AVX-512.
cap_simd()

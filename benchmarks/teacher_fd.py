"""The Frechet distance of an embedded teacher's own samples (EDM's Heun sampler) against all 1,797 real digits, on
`digits-features-v1`: the reference point a distilled generator of that teacher is compared with.

    OMP_NUM_THREADS=1 python -m benchmarks.teacher_fd --teacher digits-ddpm --images 2048 --steps 18

Any teacher spec works (sid.teachers.load_teacher); the sampler starts at min(80, the teacher's largest sigma).
"""

from __future__ import annotations

import argparse
import time

import torch

from sid.config import DIGITS_FEATURES
from sid.digits import edm_sample
from sid.metrics import get_detector, score_images
from sid.teachers import load_reference, load_teacher


def teacher_fd(spec: str, *, images: int, steps: int, seed: int = 0, batch: int = 256) -> dict:
    teacher = load_teacher(spec)
    sigma_max = min(80.0, float(getattr(teacher, "sigma_max", 80.0)))
    gen = torch.Generator().manual_seed(seed)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    start = time.time()
    batches = [edm_sample(teacher, torch.randn((min(batch, images - i), *shape), generator=gen), steps=steps,
                          sigma_max=sigma_max) for i in range(0, images, batch)]
    mu, sigma = load_reference("digits")
    score = score_images(batches, get_detector(DIGITS_FEATURES), mu, sigma)
    return dict(teacher=spec, images=score.images, heun_steps=steps, network_evaluations=2 * steps - 1,
                sigma_max=sigma_max, fd=round(score.fd, 3), fd_std=round(score.fd_std, 3),
                seconds=round(time.time() - start, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="digits-ddpm", help="a teacher spec (sid.teachers.load_teacher)")
    parser.add_argument("--images", type=int, default=2048, help="images to sample and score")
    parser.add_argument("--steps", type=int, default=18, help="Heun steps (2 * steps - 1 network evaluations)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # denormals made CPU networks up to 10x slower
    print(teacher_fd(args.teacher, images=args.images, steps=args.steps, seed=args.seed))


if __name__ == "__main__":
    main()

"""Browser demo: canny edges of an uploaded image steer Stable Diffusion (or the tiny quickstart model).

    python gradio_canny2image.py                        # the toy quickstart model (make demo trains its ControlNet)
    python gradio_canny2image.py --config models/cldm_v15.yaml --ckpt models/control_sd15_canny.pth
    python gradio_canny2image.py --config models/cldm_v15.yaml --base models/v1-5-pruned.ckpt \
        --control runs/sd15_canny_dogs/control.safetensors
    python gradio_canny2image.py --input dog.png --prompt "a corgi" --out results/   # no browser

Binds 127.0.0.1 unless --listen; --share (a public link) is opt-in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from demo.canny2image import DemoModel, GenerationInputError, GenerationRequest, generate, load_demo_model

TOY_CONFIG = "models/cldm_toy.yaml"
TOY_BASE = Path("models/toy_base.safetensors")
QUICKSTART_CONTROL = Path("runs/toy/control.safetensors")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=TOY_CONFIG, help="model config (default: the toy quickstart model)")
    p.add_argument("--ckpt", help="full ControlLDM checkpoint, e.g. models/control_sd15_canny.pth")
    p.add_argument("--base", help="SD checkpoint to put under --control (e.g. models/v1-5-pruned.ckpt)")
    p.add_argument("--control", help="ControlNet-only .safetensors/.pth (what tutorial_train.py writes)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="inference precision")
    p.add_argument("--low-vram", action="store_true", help="keep only the running parts on the GPU")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--listen", action="store_true", help="accept connections from other machines (0.0.0.0)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--input", type=Path, help="batch mode: an image to process without the browser")
    p.add_argument("--prompt", default="", help="batch mode: the prompt")
    p.add_argument("--out", type=Path, help="batch mode: folder for the edge map and images")
    p.add_argument("--num-samples", type=int, default=1, help="batch mode: images to generate")
    p.add_argument("--resolution", type=int, help="batch mode: short side (default: the model's native size)")
    p.add_argument("--steps", type=int, default=20, help="batch mode: DDIM steps")
    p.add_argument("--seed", type=int, default=-1, help="batch mode: seed (-1 = random)")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace) -> DemoModel:
    base, control = args.base, args.control
    if args.config == TOY_CONFIG and not (args.ckpt or base or control):
        # The quickstart's own weights: the committed base, and the ControlNet once `make demo` trained it.
        base = TOY_BASE if TOY_BASE.exists() else None
        control = QUICKSTART_CONTROL if QUICKSTART_CONTROL.exists() else None
    return load_demo_model(
        args.config,
        ckpt=args.ckpt,
        base=base,
        control=control,
        device=args.device,
        precision=args.precision,
        low_vram=args.low_vram,
    )


def run_batch(demo: DemoModel, args: argparse.Namespace) -> int:
    if args.out is None:
        print("error: --input needs --out DIR", file=sys.stderr)
        return 2
    try:
        image = np.asarray(Image.open(args.input))
    except OSError as err:
        print(f"error: cannot read {args.input}: {err}", file=sys.stderr)
        return 2
    request = GenerationRequest(
        prompt=args.prompt,
        num_samples=args.num_samples,
        ddim_steps=args.steps,
        seed=args.seed,
        image_resolution=args.resolution or demo.native_resolution,
    )
    try:
        result = generate(demo, image, request)
    except GenerationInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.images[0]).save(args.out / "edges.png")
    for i, img in enumerate(result.images[1:]):
        Image.fromarray(img).save(args.out / f"sample_{i:02d}.png")
    for note in result.notes:
        print(note)
    print(f"seed {result.seed}: wrote edges.png and {len(result.images) - 1} samples to {args.out}")
    return 0


def build_ui(demo: DemoModel):
    import gradio as gr

    native = demo.native_resolution
    low = min(256, native)
    defaults = GenerationRequest()

    def process(
        image,
        prompt,
        a_prompt,
        n_prompt,
        num_samples,
        resolution,
        steps,
        guess_mode,
        strength,
        scale,
        seed,
        eta,
        low_threshold,
        high_threshold,
        progress=gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress tracker)
    ):
        request = GenerationRequest(
            prompt,
            a_prompt,
            n_prompt,
            int(num_samples),
            int(resolution),
            int(steps),
            bool(guess_mode),
            float(strength),
            float(scale),
            int(seed),
            float(eta),
            int(low_threshold),
            int(high_threshold),
        )
        try:
            result = generate(demo, image, request, progress=lambda i, n: progress(i / n, desc=f"DDIM step {i}/{n}"))
        except GenerationInputError as err:
            raise gr.Error(str(err)) from None
        for note in result.notes:
            gr.Warning(note)
        return result.images, f"Seed used: **{result.seed}** (enter it to reproduce these images)"

    with gr.Blocks(title="CuteNet: Control Stable Diffusion with Canny Edge Maps") as ui:
        gr.Markdown("## CuteNet: Control Stable Diffusion with Canny Edge Maps")
        gr.Markdown(f"Weights: {demo.description}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(sources=["upload", "clipboard"], type="numpy", label="Input image")
                prompt = gr.Textbox(label="Prompt")
                run = gr.Button(value="Run", variant="primary")
                with gr.Accordion("Advanced options", open=False):
                    num_samples = gr.Slider(label="Images", minimum=1, maximum=12, value=1, step=1)
                    resolution = gr.Slider(label="Image resolution", minimum=low, maximum=768, value=native, step=64)
                    strength = gr.Slider(label="Control strength", minimum=0.0, maximum=2.0, value=1.0, step=0.01)
                    guess_mode = gr.Checkbox(label="Guess mode", value=False)
                    low_threshold = gr.Slider(label="Canny low threshold", minimum=1, maximum=255, value=100, step=1)
                    high_threshold = gr.Slider(label="Canny high threshold", minimum=1, maximum=255, value=200, step=1)
                    steps = gr.Slider(label="Steps", minimum=1, maximum=100, value=20, step=1)
                    scale = gr.Slider(label="Guidance scale", minimum=0.1, maximum=30.0, value=9.0, step=0.1)
                    seed = gr.Slider(label="Seed (-1 = random)", minimum=-1, maximum=2147483647, step=1, value=-1)
                    eta = gr.Number(label="eta (DDIM)", value=0.0)
                    a_prompt = gr.Textbox(label="Added prompt", value=defaults.a_prompt)
                    n_prompt = gr.Textbox(label="Negative prompt", value=defaults.n_prompt)
            with gr.Column():
                gallery = gr.Gallery(label="Edge map and results", show_label=True, columns=2, height="auto")
                seed_used = gr.Markdown()
        inputs = [
            image,
            prompt,
            a_prompt,
            n_prompt,
            num_samples,
            resolution,
            steps,
            guess_mode,
            strength,
            scale,
            seed,
            eta,
            low_threshold,
            high_threshold,
        ]
        run.click(fn=process, inputs=inputs, outputs=[gallery, seed_used])
    return ui


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        demo = load_model(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"weights: {demo.description}")
    if args.input is not None:
        return run_batch(demo, args)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    if args.auth and len(auth) != 2:
        print("error: --auth needs user:password", file=sys.stderr)
        return 2
    ui = build_ui(demo)
    ui.queue(default_concurrency_limit=1)
    ui.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share, auth=auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())

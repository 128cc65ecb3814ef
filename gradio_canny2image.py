r"""Browser demo: canny edges of an uploaded image steer Stable Diffusion (or the tiny quickstart model).

    python gradio_canny2image.py                        # the toy quickstart model (make demo trains its ControlNet)
    python gradio_canny2image.py --config models/cldm_v15.yaml --ckpt models/control_sd15_canny.pth
    python gradio_canny2image.py --config models/cldm_v15.yaml --base models/v1-5-pruned.ckpt \
        --control runs/sd15_canny_dogs/control.safetensors
    python gradio_canny2image.py --input dog.png --prompt "a corgi" --out results/   # no browser

Binds 127.0.0.1 unless --listen; --share (a public link) is opt-in.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from PIL import Image

from annotator.canny import DEFAULT_THRESHOLDS
from cldm.loading import load_config
from demo.canny2image import (
    BOUNDS,
    MAX_RESOLUTION,
    DemoModel,
    GenerationInputError,
    GenerationRequest,
    field_type,
    generate,
    load_demo_model,
    read_upload,
    request_defaults,
)
from ldm.flags import HelpFormatter, add_flags, given_flags, preparse
from ldm.util import check_writable

TOY_CONFIG = "models/cldm_toy.yaml"
TOY_BASE = Path("models/toy_base.safetensors")
QUICKSTART_CONTROL = Path("runs/toy/control.safetensors")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    config_path = preparse(argv, "--config", TOY_CONFIG)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=TOY_CONFIG, help="model config (the toy quickstart model by default)")
    p.add_argument("--ckpt", help="full ControlLDM checkpoint, e.g. models/control_sd15_canny.pth")
    p.add_argument("--base", help="SD checkpoint to put under --control (e.g. models/v1-5-pruned.ckpt)")
    p.add_argument("--control", help="ControlNet-only .safetensors/.pth (what tutorial_train.py writes)")
    p.add_argument(
        "--data",
        help="prepared folder the ControlNet was trained on: its dataset.json gives the canny thresholds "
        f"(default: those recorded in --control, else the config's demo section, else {DEFAULT_THRESHOLDS})",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="inference precision")
    p.add_argument("--low-vram", action="store_true", help="keep only the running parts on the GPU")
    p.add_argument(
        "--allow-nonfinite", action="store_true", help="load weights holding NaN or inf (refused by default)"
    )
    p.add_argument("--port", type=int, default=7860, help="port")
    p.add_argument("--listen", action="store_true", help="accept connections from other machines (0.0.0.0)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--input", type=Path, help="batch mode: an image to process without the browser")
    p.add_argument("--prompt", default="", help="batch mode: the prompt")
    p.add_argument("--out", type=Path, help="batch mode: folder for the edge map and images")
    add_flags(
        p.add_argument_group("batch mode's request (the page's controls; defaults: the config's demo section)"),
        GenerationRequest,
        defaults=config_request_defaults(config_path),
    )
    return p.parse_args(argv)


def config_request_defaults(config_path: str) -> GenerationRequest | None:
    """The request a config's demo section resolves to, for --help; none when the config cannot be read."""
    try:
        return request_defaults(load_config(config_path).get("demo"), config_path)
    except (FileNotFoundError, ValueError):
        return None


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
        allow_nonfinite=args.allow_nonfinite,
        data=args.data,
    )


def run_batch(demo: DemoModel, args: argparse.Namespace) -> int:
    request = dataclasses.replace(demo.defaults, prompt=args.prompt, **given_flags(args, GenerationRequest))
    try:
        result = generate(demo, read_upload(args.input), request)
    except GenerationInputError as err:
        print(f"error: {args.input}: {err}", file=sys.stderr)
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
    defaults = demo.defaults

    def slider(name: str, value: float, step: float) -> gr.Slider:
        low, high, label = BOUNDS[name]
        return gr.Slider(label=label, minimum=low, maximum=high, value=value, step=step)

    def show_upload(image_path):
        try:
            return read_upload(image_path, preview=True)
        except GenerationInputError as err:
            raise gr.Error(str(err)) from None

    def process(image_path, *values, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for a progress tracker)
        try:
            # Each control's value in the type of its GenerationRequest field (sliders send floats).
            request = GenerationRequest(**{n: field_type(n)(v) for n, v in zip(controls, values)})
            image = None if image_path is None else read_upload(image_path)
            result = generate(demo, image, request, progress=lambda i, n: progress(i / n, desc=f"DDIM step {i}/{n}"))
        except (GenerationInputError, ValueError) as err:
            raise gr.Error(str(err)) from None
        for note in result.notes:
            gr.Warning(note)
        return result.images, f"Seed used: **{result.seed}** (enter it to reproduce these images)"

    with gr.Blocks(title="CuteNet: Control Stable Diffusion with Canny Edge Maps") as ui:
        gr.Markdown("## CuteNet: Control Stable Diffusion with Canny Edge Maps")
        gr.Markdown(f"Weights: {demo.description}")
        with gr.Row():
            with gr.Column():
                # A file input rather than gr.Image: Gradio answers an upload that is no picture with a bare
                # "Error"; read_upload says why, and the preview shows the picture as it will be used.
                image = gr.File(label="Input image", file_types=["image"], type="filepath")
                preview = gr.Image(label="Upload", interactive=False, type="numpy", height=256)
                controls = {"prompt": gr.Textbox(label="Prompt")}
                run = gr.Button(value="Run", variant="primary")
                with gr.Accordion("Advanced options", open=False):
                    controls |= {
                        "num_samples": slider("num_samples", defaults.num_samples, 1),
                        "image_resolution": gr.Slider(
                            label="Image resolution",
                            minimum=min(256, native),
                            maximum=MAX_RESOLUTION,
                            value=defaults.image_resolution or native,
                            step=64,
                        ),
                        "strength": slider("strength", defaults.strength, 0.01),
                        "guess_mode": gr.Checkbox(label="Guess mode", value=defaults.guess_mode),
                        "low_threshold": slider("low_threshold", defaults.low_threshold, 1),
                        "high_threshold": slider("high_threshold", defaults.high_threshold, 1),
                        "ddim_steps": slider("ddim_steps", defaults.ddim_steps, 1),
                        "scale": slider("scale", defaults.scale, 0.1),
                        "seed": slider("seed", defaults.seed, 1),
                        "eta": slider("eta", defaults.eta, 0.01),
                        "a_prompt": gr.Textbox(label="Added prompt", value=defaults.a_prompt),
                        "n_prompt": gr.Textbox(label="Negative prompt", value=defaults.n_prompt),
                    }
            with gr.Column():
                gallery = gr.Gallery(label="Edge map and results", show_label=True, columns=2, height="auto")
                seed_used = gr.Markdown()
        image.upload(fn=show_upload, inputs=image, outputs=preview)
        run.click(fn=process, inputs=[image, *controls.values()], outputs=[gallery, seed_used])
    return ui


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.input is not None:  # batch mode: its output is checked before the model loads and samples
            if args.out is None:
                raise ValueError("--input needs --out DIR")
            check_writable(args.out, folder=True)
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

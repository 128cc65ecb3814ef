"""The locked SD UNet whose skips and middle block receive ControlNet residuals (Zhang et al. 2023, §3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ldm.modules.diffusionmodules.openaimodel import UNetModel


class ControlledUnetModel(UNetModel):
    """UNetModel that adds `control[-1]` to the middle output and `control[i]` to skip i."""

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        control: Sequence[torch.Tensor] | None = None,
        only_mid_control: bool = False,
    ) -> torch.Tensor:
        if control is not None and len(control) != len(self.input_blocks) + 1:
            raise ValueError(
                f"control must hold {len(self.input_blocks) + 1} residuals "
                f"(one per skip plus the middle), got {len(control)}"
            )
        # The encoder is the locked copy: the reference runs it without autograd in every mode.
        with torch.no_grad():
            emb = self.embed_time(timesteps)  # B×4·model_channels
            h, hs = self.encode(x, emb, context)  # B×C×H/f×W/f, skips
        if control is not None:
            h = h + control[-1]
        for i, block in enumerate(self.output_blocks):
            skip = hs[-1 - i]
            if control is not None and not only_mid_control:
                skip = skip + control[-2 - i]
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h)  # B×C_out×H×W

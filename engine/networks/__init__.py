"""Networks of GAGAvatar, with the official parameter names (the released weights load strictly).

Modules:

* :mod:`.dino`: :class:`DinoVisionTransformer`, DINOv2 ViT-B/14 as in the official torch hub;
* :mod:`.dino_base`: :class:`DINOBase`, DINOv2 + DPT-style head -> local and global features;
* :mod:`.generators`: :class:`HarmonicEmbedding`, :class:`LinearGSGenerator` (FLAME-vertex
  Gaussians) and :class:`ConvGSGenerator` (dual-lifting Gaussians);
* :mod:`.style_unet`: :class:`StyleUNet`, the neural renderer (32 channels -> RGB 512^2);
* :mod:`.cpu_layers`: its wide layers as Winograd convolutions at CPU inference;
* :mod:`.noise`: :func:`fresh_noise` for noise injection, drawn per global batch in
  data-parallel training (:func:`global_batch_rows`).
"""
from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
    "DinoVisionTransformer": ".dino",
    "DINOBase": ".dino_base",
    "HarmonicEmbedding": ".generators", "LinearGSGenerator": ".generators", "ConvGSGenerator": ".generators",
    "StyleUNet": ".style_unet",
    "fresh_noise": ".noise", "global_batch_rows": ".noise",
})

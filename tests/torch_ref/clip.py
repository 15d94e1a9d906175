"""PyTorch oracle for OpenAI CLIP's ViT models (`clip/model.py`): our own code with OpenAI's exact state-dict keys
(`visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding.weight`, `ln_final`,
`text_projection`, `logit_scale`, ...), quick_gelu, LayerNorm eps 1e-5, sequence-first transformers, and FFCLIP's
CLIP-loss preprocessing. Scriptable with torch.jit.script to build TorchScript archives like OpenAI's `ViT-B-32.pt`.
Used by the tests and the benchmarks."""
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

VIT_B_32 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    attn_mask: Optional[torch.Tensor]

    def __init__(self, width: int, heads: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):  # (L, N, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):  # (N, 3, H, W)
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.expand(x.shape[0], 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, mask)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(transformer_width ** -0.5 * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    @torch.jit.export
    def encode_image(self, image):
        return self.visual(image)

    @torch.jit.export
    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        """(logits_per_image, logits_per_text), as OpenAI's CLIP.forward."""
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / torch.linalg.vector_norm(img, dim=1, keepdim=True)
        txt = txt / torch.linalg.vector_norm(txt, dim=1, keepdim=True)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()


def randomize_(model, seed=0, scale=0.1):
    """Random biases and LayerNorm affines (upstream initialises them to 0/1), so parity tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or (name.endswith("weight") and p.ndim == 1):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def clip_loss(model, image, text, scale: int = 7, kernel: int = 32):
    """FFCLIP `losses/clip_loss.py` per sample: nn.Upsample(scale_factor=scale) -> nn.AvgPool2d(kernel) ->
    1 - logits_per_image / 100, each image scored against its own prompt (the diagonal); image NCHW."""
    image = nn.AvgPool2d(kernel)(nn.Upsample(scale_factor=scale)(image))
    return 1 - torch.diagonal(model(image, text)[0]) / 100


def embedding_loss(model, x, x_hat):
    """FFCLIP `Coach.calc_loss` embedding term: bicubic align_corners resize to 224, encode_image, mean L1."""
    e1 = model.encode_image(F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True))
    e2 = model.encode_image(F.interpolate(x_hat, size=(224, 224), mode="bicubic", align_corners=True))
    return torch.abs(e1 - e2).mean()

"""PyTorch reference loops for refining an inversion, written from upstream's procedures (our own code): W+
optimisation as rosinality/stylegan2-pytorch `projector.py` steps (Adam on w+, `get_lr`'s ramps, latent noise, area
downsampling for the losses; the noise maps fixed) and pivotal tuning as danielroich/PTI's `SingleIDCoach.train`
(Adam on every generator parameter, MSE + LPIPS, the locality regulariser of `criteria/localitly_regulizer.py`). They
run on our torch generator (torch_ref/stylegan2.py) and torch LPIPS (torch_ref/lpips.py). Per image the loss is
upstream's single-image loss; a batch sums them (each image's gradient is its own). Tests and benchmarks only."""
import copy
import math

import torch
import torch.nn.functional as F


def lr_ramp(t, rampup, rampdown):
    """projector.py get_lr(t, 1, rampdown, rampup); a ramp of 0 is no ramp."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)


def shrink(x, size):
    """F.interpolate(mode='area') to `size` when larger (the projectors' downsampling before the perceptual loss)."""
    return x if size is None or x.shape[-1] <= size else F.interpolate(x, size=(size, size), mode="area")


def image_losses(lpips, image, target, size):
    """Per image (LPIPS, MSE) (N,), both on the images shrunk to `size`."""
    a, b = shrink(image, size), shrink(target, size)
    return lpips(a, b).flatten(), (a - b).square().mean((1, 2, 3))


def zero_noise(g, batch, like):
    """noise_mode 'none': every noise map zero."""
    return [torch.zeros(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), dtype=like.dtype)
            for i in range(g.num_layers)]


class WPlusLoop:
    """projector.py --w_plus from given codes: per step, lr = lr0 * get_lr ramp, w + latent noise, G(w) with the
    fixed noise buffers, lpips_weight LPIPS + l2_weight MSE on the shrunk images, Adam."""

    def __init__(self, g, lpips, codes, targets, *, steps, lr, lr_rampup, lr_rampdown, lpips_weight, l2_weight,
                 loss_size, betas=(0.9, 0.999), eps=1e-8):
        self.g, self.lpips, self.targets = g, lpips, targets
        self.w = codes.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.w], lr=lr, betas=betas, eps=eps)
        self.steps, self.lr, self.ramps = steps, lr, (lr_rampup, lr_rampdown)
        self.weights, self.loss_size = (lpips_weight, l2_weight), loss_size

    def step(self, i, noise=None):
        """Step i; `noise` (N, L, D): the latent noise already scaled (None: none)."""
        self.opt.param_groups[0]["lr"] = self.lr * lr_ramp(i / self.steps, *self.ramps)
        w = self.w if noise is None else self.w + noise
        image, _ = self.g([w], input_is_latent=True, randomize_noise=False)
        lp, mse = image_losses(self.lpips, image, self.targets, self.loss_size)
        loss = (self.weights[0] * lp + self.weights[1] * mse).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


class PTILoop:
    """PTI for one image: a copy of the generator tuned by Adam(lr) on l2_weight MSE + lpips_weight LPIPS of
    G(pivot) (fixed noise) + the locality regulariser at w_r = pivot + alpha (w - pivot) / ||w - pivot|| with
    w = truncated mapping(z): reg_l2 MSE + reg_lpips LPIPS between G_orig(w_r) and G(w_r), noise zero."""

    def __init__(self, g, lpips, pivot, target, *, lr, l2_weight, lpips_weight, alpha, reg_l2, reg_lpips,
                 truncation, latent_avg, loss_size=None, betas=(0.9, 0.999), eps=1e-8):
        self.original = g
        self.g = copy.deepcopy(g).requires_grad_(True)
        self.lpips, self.pivot, self.target = lpips, pivot, target
        self.opt = torch.optim.Adam(self.g.parameters(), lr=lr, betas=betas, eps=eps)
        self.l2_weight, self.lpips_weight = l2_weight, lpips_weight
        self.alpha, self.reg_l2, self.reg_lpips = alpha, reg_l2, reg_lpips
        self.truncation, self.latent_avg, self.loss_size = truncation, latent_avg, loss_size

    def regulariser(self, z):
        with torch.no_grad():
            w = self.original.style(z)
            w = self.latent_avg + self.truncation * (w - self.latent_avg)
            w = w.unsqueeze(1).repeat(1, self.g.n_latent, 1)
        loss = 0.0
        for w_code in w:  # one sample at a time, as upstream
            d = w_code.unsqueeze(0) - self.pivot
            w_r = self.pivot + self.alpha * d / torch.norm(d, p=2)
            noise = zero_noise(self.g, 1, w_r)
            new, _ = self.g([w_r], input_is_latent=True, noise=noise)
            with torch.no_grad():
                old, _ = self.original([w_r], input_is_latent=True, noise=noise)
            old_s, new_s = shrink(old, self.loss_size), shrink(new, self.loss_size)
            loss = loss + self.reg_l2 * F.mse_loss(old_s, new_s) + self.reg_lpips * self.lpips(old_s, new_s).mean()
        return loss / len(w)

    def step(self, z=None):
        """One tuning step; z (samples, style_dim) for the regulariser (None: no regulariser)."""
        image, _ = self.g([self.pivot], input_is_latent=True, randomize_noise=False)
        lp, mse = image_losses(self.lpips, image, self.target, self.loss_size)
        loss = self.l2_weight * mse.sum() + self.lpips_weight * lp.sum()
        if z is not None:
            loss = loss + self.regulariser(z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

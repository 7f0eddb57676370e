"""Evaluation on held-out cross-identity pairs: PSNR, SSIM, keypoint consistency."""

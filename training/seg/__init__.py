"""Downstream semantic segmentation: heads on timm backbones, metrics, inference, probes."""

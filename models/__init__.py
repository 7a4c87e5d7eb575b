"""Model zoo (Wide-ResNet, pre-activation ResNet, DenseNet-BC, ResNeXt): filled by the model-zoo work."""

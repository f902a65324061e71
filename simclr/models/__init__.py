"""Encoders and the head: our CIFAR/ImageNet-stem ResNets (`resnet`), timm /
torchvision / custom encoders (`external`), the projection head and the
SimCLR model (`head`), and the one factory that builds an encoder from a
config or an exported encoder's record (`factory`)."""

"""Encoders and the head: our CIFAR/ImageNet-stem ResNets (:mod:`~simclr.models.resnet`), timm /
torchvision / custom encoders (:mod:`~simclr.models.external`), the projection head and the
SimCLR model (:mod:`~simclr.models.head`), and the one factory that builds an encoder from a
config or an exported encoder's record (:mod:`~simclr.models.factory`)."""

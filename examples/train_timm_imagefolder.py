"""A plain timm + torch training script, independent of sparsetrain: the kind of model people bring to it.

    python examples/train_timm_imagefolder.py DATA OUT.pth.tar --model resnet18 --epochs 4 --image-size 32

Trains on DATA/train, evaluates top-1 accuracy on DATA/val after every epoch, and saves a timm-style training
checkpoint ({"epoch", "arch", "state_dict", "optimizer", "args", "metric"}). Preprocessing: resize to a square,
ImageNet mean/std (what `data.source=imagefolder` in sparsetrain uses too).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def loaders(root: str, size: int, batch: int) -> tuple[DataLoader, DataLoader, int]:
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train, val = (datasets.ImageFolder(f"{root}/{split}", transform=tf) for split in ("train", "val"))
    return (DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=256),
            len(train.classes))


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train, val, classes = loaders(args.data, args.image_size, args.batch_size)
    model = timm.create_model(args.model, num_classes=classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(train))
    for epoch in range(args.epochs):
        model.train()
        start = time.time()
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
        metric = accuracy(model, val)
        print(f"epoch {epoch + 1}/{args.epochs}: val top-1 {metric:.4f} % ({time.time() - start:.0f} s)", flush=True)
    torch.save({"epoch": args.epochs, "arch": args.model, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "args": args, "metric": metric}, args.out)
    print(f"saved {args.out}: val top-1 {metric:.4f} %")


if __name__ == "__main__":
    main()

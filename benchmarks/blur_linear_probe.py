"""Does blurring held-out crops to the training sharpness help? A linear probe on HOG.

    python benchmarks/blur_linear_probe.py [--features features/fer2013] [--data ../shared/data/fer2013]

Fits scikit-learn's SGDClassifier (log loss, alpha 1e-3, 15 epochs) on the standardised HOG of
the store's kept training crops, then scores the raw PublicTest crops as given and blurred by
a few sigmas (HOG recomputed).
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

from ensemble_fer import datasets, hog, sharpness
from ensemble_fer.feature_store import FeatureStore


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=Path, default=Path("features/fer2013"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/fer2013"))
    args = p.parse_args()
    train = FeatureStore(args.features).load("train")
    kept = train["kept"]
    scaler = StandardScaler().fit(train["hog"][kept])
    clf = SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=15, random_state=0)
    clf.fit(scaler.transform(train["hog"][kept]), train["labels"][kept])
    records = datasets.open_dataset(args.data).splits["val"]
    images = np.stack([datasets.load_image(r) for r in records])
    labels = np.array([r.label for r in records])
    for sigma in (0.0, 2.0, 3.0):
        features = scaler.transform(hog.sliding_hog(sharpness.blur(images, sigma)))
        print(f"PublicTest blurred sigma {sigma}: accuracy {(clf.predict(features) == labels).mean():.4f}")


if __name__ == "__main__":
    main()

"""Pictures people would rather see than read, written as PNG files at the end of training:
training curves, a confusion matrix, and a grid of sample predictions.

Matplotlib draws off-screen (the Agg backend); it is imported only when a picture is made.
"""
import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def confusion_matrix(labels, predictions, num_classes):
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return counts


ACCURACY_CLIP = 1e-4        # the logit axis cannot show 0 or 1: values are kept this far inside


def plot_history(history, path, title="training"):
    """Loss and accuracy per epoch (training and validation), and the learning rate.

    The accuracy axis is a logit scale (0.9, 0.99, 0.999 equally spaced, as error rates on a
    log scale), so the late epochs, where a run goes from 98% to 99%, stay as readable as the
    first ones instead of flattening against 100%. The loss and the learning rate are on log
    scales when positive."""
    plt = _pyplot()
    epochs = history.get("epoch") or list(range(1, len(history.get("loss", [])) + 1))
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("lr", "learning rate (last step)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label) in zip(axes, panels):
        curves = [(history[k], style, name) for k, style, name in (
            (key, "o-", "train" if key != "lr" else "lr"), (f"val_{key}", "s-", "validation"))
            if k in history]
        if key == "accuracy":
            curves = [(np.clip(np.asarray(v, float), ACCURACY_CLIP, 1 - ACCURACY_CLIP), style,
                       name) for v, style, name in curves]
        for values, style, name in curves:
            ax.plot(epochs, values, style, label=name, ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        values = [v for c in curves for v in np.asarray(c[0], float) if np.isfinite(v)]
        if key == "accuracy" and values:
            ax.set_yscale("logit")
            ax.set_ylim(max(ACCURACY_CLIP, min(values) * 0.9),
                        min(1 - ACCURACY_CLIP, 1 - (1 - max(values)) * 0.7))
        elif values and min(values) > 0:
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(counts, classes, path, title="confusion matrix"):
    """Rows: true class; columns: predicted class; each cell the count, shaded by the row's
    fraction (recall)."""
    plt = _pyplot()
    counts = np.asarray(counts)
    k = len(classes)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=60, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if fractions[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    # The accuracy on a line of its own, and a long title (a folder's path) wrapped: a title
    # wider than the figure would be cut at both ends, the accuracy with it.
    import textwrap
    width = max(20, int(size * 9))             # characters that fit the figure's width
    ax.set_title("\n".join(textwrap.wrap(title, width) + [f"accuracy {100 * accuracy:.2f}% "
                                                          f"({int(counts.sum())} images)"]))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def worst_predictions(probabilities, labels, count=32):
    """The positions of the `count` examples the model got most wrong: the lowest probability
    given to the true class first (the confident mistakes), ties in dataset order."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels, np.int64)
    true_class = probabilities[np.arange(len(labels)), labels]
    return np.argsort(true_class, kind="stable")[:count]


def plot_predictions(images, labels, probabilities, classes, path, columns=8,
                     title="sample predictions"):
    """A grid of images (uint8 [N, H, W, C]) with the true and the predicted class and its
    probability; wrong predictions in red. (The training command shows the worst ones:
    worst_predictions.)"""
    plt = _pyplot()
    images = np.asarray(images)
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows))
    axes = np.atleast_1d(axes).ravel()
    predicted = np.argmax(probabilities, axis=1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        right = predicted[i] == labels[i]
        ax.set_title(f"true {classes[labels[i]]} {100 * probabilities[i, labels[i]]:.0f}%\n"
                     f"pred {classes[predicted[i]]} "
                     f"{100 * probabilities[i, predicted[i]]:.0f}%", fontsize=8,
                     color="black" if right else "red")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

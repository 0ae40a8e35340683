"""Reading a torch.optim state dict's parameter groups (converted to NumPy) into cupycnn's.

PyTorch's groups carry keys that choose its implementation (foreach, fused, ...) or a variant
cupycnn does not have (amsgrad, maximize, ...): they are accepted only at the values that mean
"the plain algorithm", and dropped. AdamW's groups say decoupled_weight_decay; lists arrive where
cupycnn keeps tuples (betas).
"""
import copy

TORCH_ONLY_KEYS = {"maximize": (False,), "foreach": (None, False, True),
                   "fused": (None, False, True), "differentiable": (False,),
                   "capturable": (False,), "amsgrad": (False,)}


def translate_group(saved, index, optimizer_name, decoupled, problems):
    """The hyperparameters of saved group `index` (all its keys but "params") in cupycnn's terms;
    what cupycnn cannot honour is added to `problems` (one sentence each). `decoupled`: whether
    the optimizer decouples its weight decay (AdamW)."""
    group = {key: copy.deepcopy(value) for key, value in saved.items() if key != "params"}
    for key, accepted in TORCH_ONLY_KEYS.items():
        if key in group and group.pop(key) not in accepted:
            problems.append(f"group {index}: {key}={saved[key]!r} is not supported")
    flag = group.pop("decoupled_weight_decay", decoupled)
    if bool(flag) != decoupled:
        problems.append(f"group {index}: decoupled_weight_decay={flag!r} does not match "
                        f"{optimizer_name}")
    if isinstance(group.get("betas"), list):
        group["betas"] = tuple(group["betas"])
    return group

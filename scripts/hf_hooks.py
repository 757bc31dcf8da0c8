"""Hook points on a Hugging Face GPT-2, shared by the golden scripts: RESID_PRE(L) is block L's
input (a forward pre-hook), BLOCK_OUTPUT(L) its output (a forward hook)."""


def register(block, hook, change):
    """Registers `change(hidden) -> hidden` on `block` at `hook` ("resid_pre" or
    "block_output"); returns the handle to remove."""
    if hook == "resid_pre":
        def pre(m, args, kwargs):
            if args:
                return (change(args[0]),) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = change(kwargs["hidden_states"])
            return args, kwargs
        return block.register_forward_pre_hook(pre, with_kwargs=True)

    def post(m, args, out):
        if isinstance(out, tuple):
            return (change(out[0]),) + tuple(out[1:])
        return change(out)
    return block.register_forward_hook(post)

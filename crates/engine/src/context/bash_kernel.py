# cella's launcher of bash_kernel (the `bash` context's kernel): the kernel as published,
# but for pexpect's pause before each line it types into bash. That pause (50 ms by default,
# for programs that flush their input before reading it, which bash does not) made every
# call take 0.1 s and a start 2 s: bash_kernel types its set-up into bash line by line.
import pexpect


class _Spawn(pexpect.spawn):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delaybeforesend = None


pexpect.spawn = _Spawn

from bash_kernel.kernel import BashKernel  # noqa: E402
from ipykernel.kernelapp import IPKernelApp  # noqa: E402

IPKernelApp.launch_instance(kernel_class=BashKernel)

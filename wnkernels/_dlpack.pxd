# DLPack's C structs (dlpack.h v0.8, unversioned "dltensor" capsules), as
# both Cython modules read and write them: the dispatcher reads torch
# tensors' descriptions through torch._C._to_dlpack, the CPU backend makes
# torch outputs through torch._C._from_dlpack.
from libc.stdint cimport int32_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    typedef struct { int32_t device_type; int32_t device_id; } wn_DLDevice;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } wn_DLDataType;
    typedef struct {
        void *data; wn_DLDevice device; int32_t ndim; wn_DLDataType dtype;
        int64_t *shape; int64_t *strides; uint64_t byte_offset;
    } wn_DLTensor;
    typedef struct wn_DLManagedTensor {
        wn_DLTensor dl_tensor; void *manager_ctx;
        void (*deleter)(struct wn_DLManagedTensor *self);
    } wn_DLManagedTensor;
    """
    ctypedef struct wn_DLDevice:
        int32_t device_type
        int32_t device_id
    ctypedef struct wn_DLDataType:
        unsigned char code
        unsigned char bits
        unsigned short lanes
    ctypedef struct wn_DLTensor:
        void *data
        wn_DLDevice device
        int32_t ndim
        wn_DLDataType dtype
        int64_t *shape
        int64_t *strides
        unsigned long long byte_offset
    ctypedef struct wn_DLManagedTensor:
        wn_DLTensor dl_tensor
        void *manager_ctx
        void (*deleter)(wn_DLManagedTensor *) noexcept nogil

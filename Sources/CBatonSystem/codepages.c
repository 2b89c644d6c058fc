// Letting go of the code pages baton has run once they have done their work (at start, after a reload, after a
// status answer): the kernel maps up to 64 KiB of a file around each page run, so that starting once leaves most of
// baton's 11 MB of code (and much of libc's) resident although an idle baton runs almost none of it.
// MADV_DONTNEED on each loaded object's text segment (read-only, never written: nothing is lost) takes those pages
// out of baton's resident set; they stay in the page cache and come back at a minor fault when run again. Objects
// with text relocations (whose text was written at load) and the vDSO are left alone.
#define _GNU_SOURCE
#include "CBatonSystem.h"

#include <elf.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct release_state {
    uintptr_t page;
    int released;
    int failed;
};

// Whether the object's dynamic section says its text is relocated at load (DT_TEXTREL, DF_TEXTREL).
static int has_text_relocations(const struct dl_phdr_info *info) {
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[i];
        if (header->p_type != PT_DYNAMIC) continue;
        const ElfW(Dyn) *entry = (const ElfW(Dyn) *)(info->dlpi_addr + header->p_vaddr);
        for (; entry->d_tag != DT_NULL; entry++) {
            if (entry->d_tag == DT_TEXTREL) return 1;
            if (entry->d_tag == DT_FLAGS && (entry->d_un.d_val & DF_TEXTREL)) return 1;
        }
    }
    return 0;
}

static int release_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct release_state *state = data;
    if (info->dlpi_name && strstr(info->dlpi_name, "vdso")) return 0;
    if (has_text_relocations(info)) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[i];
        if (header->p_type != PT_LOAD || !(header->p_flags & PF_X) || (header->p_flags & PF_W)) continue;
        // Whole pages only: a page the segment shares with a neighbour is left alone.
        uintptr_t first = info->dlpi_addr + header->p_vaddr;
        uintptr_t start = (first + state->page - 1) & ~(state->page - 1);
        uintptr_t end = (first + header->p_memsz) & ~(state->page - 1);
        if (end <= start) continue;
        if (madvise((void *)start, end - start, MADV_DONTNEED) == 0) {
            state->released++;
        } else {
            state->failed++;
        }
    }
    return 0;
}

int cbaton_release_code_pages(void) {
    struct release_state state = {(uintptr_t)sysconf(_SC_PAGESIZE), 0, 0};
    dl_iterate_phdr(release_object, &state);
    if (state.released == 0) {
        errno = ENOENT;
        return -1;
    }
    return state.failed;
}

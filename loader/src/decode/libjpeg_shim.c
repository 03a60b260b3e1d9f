/*
 * The loader's bridge to libjpeg (the library inside libjpeg-turbo, which is PIL's decoder).
 *
 * Why not TurboJPEG's tj3Decompress8: it cannot tell a fatal error from a warning once any warning has been
 * raised (tj3GetErrorCode answers "warning" for a file that warned and then failed), so a corrupt file that
 * PIL refuses came back as decoded, with whatever the output buffer held before. Here our own error manager
 * records the two separately: a fatal error (PIL: "broken data stream") is an error, warnings (PIL decodes
 * and carries on) are counted. libjpeg reports errors by longjmp, which must not cross Rust frames: every
 * longjmp lands in a setjmp of this file, in the same call it was raised in.
 *
 * Decoding settings are PIL's (and TurboJPEG's defaults): accurate integer IDCT, smooth ("fancy") chroma
 * upsampling. A region is decoded as TurboJPEG does it: jpeg_crop_scanline for the columns,
 * jpeg_skip_scanlines above and below.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jpeglib.h"
#include "jerror.h"

/* Mirrored by `Status` in turbo.rs. */
typedef struct {
    int fatal;        /* 1 when libjpeg signalled an error: nothing decoded may be used */
    unsigned warnings; /* libjpeg warnings so far (corrupt data it worked around, as PIL does) */
    char message[JMSG_LENGTH_MAX]; /* the fatal error's text, else the first warning's */
} img_jpeg_status;

/* Mirrored by `Info` in turbo.rs. */
typedef struct {
    unsigned width, height;
    int components;
    int color_space; /* J_COLOR_SPACE of the file */
    int max_h_samp, max_v_samp;
    int h_samp[4], v_samp[4];
} img_jpeg_info;

typedef struct {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us a pointer to it */
    jmp_buf jump;
    img_jpeg_status *status;
    int scan_limit;
} img_error;

typedef struct {
    struct jpeg_progress_mgr pub;
    img_error *err;
} img_progress;

/* jpeg_mem_src's behaviour, plus a record of whether libjpeg ever asked for bytes past the end. */
typedef struct {
    struct jpeg_source_mgr pub;
    int ran_out;
} img_source;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    img_error err;
    img_progress progress;
    img_source src;
} img_jpeg;

static const JOCTET fake_eoi[2] = {0xFF, JPEG_EOI};

static void src_init(j_decompress_ptr cinfo) { (void)cinfo; }

/* The data is exhausted: like jpeg_mem_src, warn and hand libjpeg an end-of-image marker (it then fills what
 * is missing with grey), and remember it. */
static boolean src_fill(j_decompress_ptr cinfo) {
    img_source *src = (img_source *)cinfo->src;
    src->ran_out = 1;
    WARNMS(cinfo, JWRN_JPEG_EOF);
    src->pub.next_input_byte = fake_eoi;
    src->pub.bytes_in_buffer = 2;
    return TRUE;
}

static void src_skip(j_decompress_ptr cinfo, long count) {
    img_source *src = (img_source *)cinfo->src;
    if (count <= 0) return;
    while (count > (long)src->pub.bytes_in_buffer) {
        count -= (long)src->pub.bytes_in_buffer;
        (void)src_fill(cinfo);
    }
    src->pub.next_input_byte += count;
    src->pub.bytes_in_buffer -= (size_t)count;
}

static void src_term(j_decompress_ptr cinfo) { (void)cinfo; }

static void on_error(j_common_ptr cinfo) {
    img_error *e = (img_error *)cinfo->err;
    e->status->fatal = 1;
    (*cinfo->err->format_message)(cinfo, e->status->message);
    longjmp(e->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    img_error *e = (img_error *)cinfo->err;
    if (level >= 0) return; /* trace messages */
    if (e->status->warnings == 0) (*cinfo->err->format_message)(cinfo, e->status->message);
    e->status->warnings++;
    cinfo->err->num_warnings++;
}

static void on_output(j_common_ptr cinfo) { (void)cinfo; }

/* A progressive file with thousands of tiny scans is a known way to burn minutes of CPU (TurboJPEG's
 * TJPARAM_SCANLIMIT does the same). */
static void on_progress(j_common_ptr cinfo) {
    img_progress *p = (img_progress *)cinfo->progress;
    int scan = ((j_decompress_ptr)cinfo)->input_scan_number;
    if (scan > p->err->scan_limit) {
        p->err->status->fatal = 1;
        snprintf(p->err->status->message, JMSG_LENGTH_MAX, "progressive JPEG with more than %d scans",
                 p->err->scan_limit);
        longjmp(p->err->jump, 1);
    }
}

/* jpeg_create_decompress can fail (out of memory): 0 on success. Apart from img_jpeg_new so that `j` is not a
 * local of the function that calls setjmp. */
static int create(img_jpeg *j) {
    if (setjmp(j->err.jump)) return -1;
    jpeg_create_decompress(&j->cinfo);
    return 0;
}

/* A decompressor for one image, or NULL (status says why). */
img_jpeg *img_jpeg_new(int scan_limit, img_jpeg_status *status) {
    img_jpeg *j = calloc(1, sizeof(img_jpeg));
    if (j == NULL) {
        status->fatal = 1;
        snprintf(status->message, JMSG_LENGTH_MAX, "out of memory");
        return NULL;
    }
    j->cinfo.err = jpeg_std_error(&j->err.pub);
    j->err.pub.error_exit = on_error;
    j->err.pub.emit_message = on_message;
    j->err.pub.output_message = on_output;
    j->err.status = status;
    j->err.scan_limit = scan_limit;
    if (create(j) != 0) {
        free(j);
        return NULL;
    }
    j->progress.pub.progress_monitor = on_progress;
    j->progress.err = &j->err;
    j->cinfo.progress = &j->progress.pub;
    return j;
}

void img_jpeg_free(img_jpeg *j) {
    if (j == NULL) return;
    jpeg_destroy_decompress(&j->cinfo);
    free(j);
}

/* Reads the headers up to the first scan. `data` must outlive `img_jpeg_decode`. 0 on success. */
int img_jpeg_header(img_jpeg *j, const unsigned char *data, unsigned long len, img_jpeg_status *status,
                    img_jpeg_info *info) {
    j_decompress_ptr c = &j->cinfo;
    j->err.status = status;
    if (setjmp(j->err.jump)) return -1;
    j->src.pub.init_source = src_init;
    j->src.pub.fill_input_buffer = src_fill;
    j->src.pub.skip_input_data = src_skip;
    j->src.pub.resync_to_restart = jpeg_resync_to_restart;
    j->src.pub.term_source = src_term;
    j->src.pub.next_input_byte = data;
    j->src.pub.bytes_in_buffer = len;
    j->src.ran_out = 0;
    c->src = &j->src.pub;
    jpeg_read_header(c, TRUE);
    info->width = c->image_width;
    info->height = c->image_height;
    info->components = c->num_components;
    info->color_space = (int)c->jpeg_color_space;
    info->max_h_samp = c->max_h_samp_factor;
    info->max_v_samp = c->max_v_samp_factor;
    for (int i = 0; i < 4; i++) {
        int known = i < c->num_components;
        info->h_samp[i] = known ? c->comp_info[i].h_samp_factor : 0;
        info->v_samp[i] = known ? c->comp_info[i].v_samp_factor : 0;
    }
    return 0;
}

/*
 * Decodes the window (x, y, w, h) of the image, after img_jpeg_header, into `out` (h rows of `stride`
 * bytes) as RGB (cmyk == 0) or CMYK. `x` must be a multiple of the iMCU width (max_h_samp * 8) unless the
 * window spans every column. 0 on success (status->warnings may be non-zero), -1 on a libjpeg error, -2
 * when the window is not one libjpeg can crop to (a caller bug: status says so), -3 when the data ran out
 * before the window's last row: PIL's "image file is truncated". Running out later, while looking for the
 * end-of-image marker after the last row, is not an error: PIL decodes such a file too.
 */
int img_jpeg_decode(img_jpeg *j, int cmyk, unsigned x, unsigned y, unsigned w, unsigned h, unsigned char *out,
                    size_t stride, img_jpeg_status *status) {
    j_decompress_ptr c = &j->cinfo;
    j->err.status = status;
    if (setjmp(j->err.jump)) return -1;
    c->out_color_space = cmyk ? JCS_CMYK : JCS_EXT_RGB;
    c->dct_method = JDCT_ISLOW;
    c->do_fancy_upsampling = TRUE;
    jpeg_start_decompress(c);
    if (x + w > c->output_width || y + h > c->output_height || w == 0 || h == 0) {
        snprintf(status->message, JMSG_LENGTH_MAX, "window %ux%u at (%u, %u) outside a %ux%u image", w, h, x, y,
                 c->output_width, c->output_height);
        return -2;
    }
    if (x != 0 || w != c->output_width) {
        JDIMENSION cx = x, cw = w;
        jpeg_crop_scanline(c, &cx, &cw);
        if (cx != x || cw != w) {
            snprintf(status->message, JMSG_LENGTH_MAX, "window %ux%u at %u is not aligned to an iMCU", w, h, x);
            return -2;
        }
    }
    if (y > 0 && jpeg_skip_scanlines(c, y) != y) {
        snprintf(status->message, JMSG_LENGTH_MAX, "could not skip %u rows", y);
        return -2;
    }
    /* All rows at once, as TurboJPEG asks for them: libjpeg then writes each upsampled row group straight
     * into place (one row per call costs a copy through its spare-row buffer, ~4% here). The pointer array
     * lives in libjpeg's per-image pool, freed by finish/abort/destroy. */
    JSAMPARRAY rows = (JSAMPARRAY)(*c->mem->alloc_small)((j_common_ptr)c, JPOOL_IMAGE, sizeof(JSAMPROW) * h);
    for (unsigned i = 0; i < h; i++) rows[i] = out + (size_t)i * stride;
    while (c->output_scanline < y + h) {
        JDIMENSION done = c->output_scanline - y;
        if (jpeg_read_scanlines(c, rows + done, h - done) == 0) {
            /* Only a suspending data source returns no row, and ours never suspends. */
            snprintf(status->message, JMSG_LENGTH_MAX, "libjpeg returned no row at %u", c->output_scanline);
            return -2;
        }
    }
    if (j->src.ran_out) {
        snprintf(status->message, JMSG_LENGTH_MAX, "the data ends at row %u of %u", c->output_scanline,
                 c->output_height);
        return -3;
    }
    if (c->output_scanline < c->output_height) {
        /* Rows below the window are never entropy-decoded (and damage there goes unseen). */
        JDIMENSION rest = c->output_height - c->output_scanline;
        if (jpeg_skip_scanlines(c, rest) != rest) {
            snprintf(status->message, JMSG_LENGTH_MAX, "could not skip the last %u rows", rest);
            return -2;
        }
    }
    jpeg_finish_decompress(c);
    return 0;
}

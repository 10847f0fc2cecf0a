/* fuzz_alink_frame.c - the agentlink frame decoder and message validation
 * over arbitrary bytes, as the hands and the client consume them: decode
 * frames from the stream (skipping oversized ones), parse each payload,
 * and re-encode every accepted message to check it decodes to the same
 * type. A small maximum makes the oversized path reachable. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agentlink/agentlink.h"
#include "base/buf.h"
#include "base/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;

    while (off < size) {
        const uint8_t *payload = NULL;
        size_t plen = 0;
        int rc = alink_frame_decode(data + off, size - off, 4096, &payload, &plen);
        if (rc == 0)
            break;
        if (rc < 0) {
            if (rc != WP_ETOOBIG || plen <= 4096)
                abort();
            /* Skip the announced payload, as the hands do. */
            if (size - off - 4 < plen)
                break;
            off += 4 + plen;
            continue;
        }
        if ((size_t)rc != plen + 4 || payload != data + off + 4)
            abort();
        off += (size_t)rc;

        struct alink_msg m;
        struct wp_err err;
        uint64_t id;
        if (alink_msg_parse(payload, plen, &m, &id, &err) < 0) {
            if (m.json)
                abort();
            continue;
        }
        struct wp_buf b;
        wp_buf_init(&b, 1 << 20);
        if (alink_frame_encode(&b, m.json, 1 << 20, &err) == 0) {
            const uint8_t *p2;
            size_t l2;
            struct alink_msg m2;
            if (alink_frame_decode((uint8_t *)b.data, b.len, 1 << 20, &p2, &l2) != (int)b.len)
                abort();
            if (alink_msg_parse(p2, l2, &m2, NULL, &err) < 0 || m2.type != m.type ||
                m2.id != m.id)
                abort();
            alink_msg_free(&m2);
        }
        wp_buf_free(&b);
        /* Builders over whatever text the message carried. */
        if (m.text) {
            json_t *r = alink_msg_result(1, m.text, m.text_len, true);
            if (!r)
                abort();
            json_decref(r);
        }
        alink_msg_free(&m);
    }
    /* The raw bytes as tool output text: must always become a JSON string. */
    json_t *t = alink_json_text((const char *)data, size);
    if (!t)
        abort();
    json_decref(t);
    return 0;
}

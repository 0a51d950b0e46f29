/* rc.c - messages and names of rc_t codes, and the core_err formatter. */
#include "core/rc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const rc_msgs[] = {
#define CORE_RC_MSG(name, lower, msg) msg,
    CORE_RC_MAP(CORE_RC_MSG)
#undef CORE_RC_MSG
};

static const char *const rc_names[] = {
#define CORE_RC_NAME(name, lower, msg) #lower,
    CORE_RC_MAP(CORE_RC_NAME)
#undef CORE_RC_NAME
};

const char *rc_str(rc_t rc)
{
    return (unsigned)rc < RC__COUNT ? rc_msgs[rc] : "unknown";
}

const char *rc_name(rc_t rc)
{
    return (unsigned)rc < RC__COUNT ? rc_names[rc] : "unknown";
}

rc_t core_err(core_err_t *err, rc_t rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static const char *const rc_reasons[] = {
#define CORE_REASON_NAME(name) #name,
    CORE_REASON_MAP(CORE_REASON_NAME)
#undef CORE_REASON_NAME
};

rc_t core_err_r(core_err_t *err, rc_t rc, const char *reason, const char *fmt, ...)
{
    if (err) {
        int n = snprintf(err->msg, sizeof err->msg, "%s: ", reason);
        if (n < 0 || (size_t)n >= sizeof err->msg)
            n = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg + n, sizeof err->msg - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return rc;
}

const char *core_err_reason(const core_err_t *err)
{
    if (!err)
        return "";
    const char *colon = memchr(err->msg, ':', sizeof err->msg);
    if (!colon || colon[1] != ' ')
        return "";
    size_t n = (size_t)(colon - err->msg);
    for (size_t i = 0; i < sizeof rc_reasons / sizeof rc_reasons[0]; i++)
        if (strlen(rc_reasons[i]) == n && memcmp(rc_reasons[i], err->msg, n) == 0)
            return rc_reasons[i];
    return "";
}

/* parity_text.c: qie-parity text. Until the text model lands this entry point reports that it is
 * not available in this build. */
#include "err.h"
#include "parity.h"

int parity_text(char *err, const ParityArgs *a) {
    (void)a;
    qie_seterr(err, "qie-parity text: the text model is not in this build yet");
    return QIE_EUNSUPPORTED;
}

/*
 * loyalty.h — declarations shared across the C files.
 */
#ifndef LOYALTY_H
#define LOYALTY_H

#include "compat.h"

#endif
